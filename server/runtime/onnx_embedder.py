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

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "OnnxEmbedder", "load_tokenizer"]

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


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
        inter_op_threads: int | None = None,
        graph_optimization_level: str = "all",
    ) -> None:
        """`model_info` defaults to the one in the directory's manifest.json. With more than
        one inter-op thread the session runs independent graph nodes in parallel
        (ORT_PARALLEL); otherwise sequentially, one inter-op thread (the default)."""
        super().__init__(model_dir, model_info or read_manifest(Path(model_dir)).model)
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization_level {graph_optimization_level!r}: expected one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        inter_op = inter_op_threads or 1
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization_level]
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if inter_op > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.inter_op_num_threads = inter_op
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        spin = "1" if thread_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        if inter_op > 1:
            options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op
        self.graph_optimization_level = graph_optimization_level

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, self.feed(input_ids, attention_mask))[0]
