"""ONNX Runtime inference of a prepared model variant (model.onnx): the shared tokenization,
padding, pooling and normalization around one InferenceSession. The parity gate calls this very
code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.manifest import ModelInfo, read_manifest
from server.runtime.bare_transformer import BareTransformerEmbedder
from server.runtime.tokenizer import load_tokenizer

__all__ = ["OnnxEmbedder", "load_tokenizer"]


class OnnxEmbedder(BareTransformerEmbedder):
    runtime = "onnx"
    runtime_version = ort.__version__

    def __init__(
        self,
        model_dir: Path,
        *,
        intra_op_threads: int | None = None,
        thread_spinning: bool = False,
        model_info: ModelInfo | None = None,
    ) -> None:
        """`model_info` defaults to the one in the directory's manifest.json."""
        super().__init__(model_dir, model_info or read_manifest(Path(model_dir)).model)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        spin = "1" if thread_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.intra_op_threads = intra_op_threads

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, self.feed(input_ids, attention_mask))[0]
