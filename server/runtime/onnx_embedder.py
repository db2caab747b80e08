"""ONNX Runtime inference of a prepared model variant: tokenize without fixed padding, pad each
batch to its own longest sequence, run, pool, normalize. The parity gate calls this very code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.manifest import ModelInfo, read_manifest
from server.pooling import l2_normalize, pool
from server.runtime.base import TokenizedText, pad_batch
from server.runtime.tokenizer import load_tokenizer, pad_token_id, tokenize

__all__ = ["OnnxEmbedder", "load_tokenizer"]


class OnnxEmbedder:
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
        self.model_dir = Path(model_dir)
        info = model_info or read_manifest(self.model_dir).model
        self.max_seq_length = info.max_seq_length
        self.embedding_dim = info.embedding_dim
        self.pooling = info.pooling
        self.normalize = info.normalize
        self.tokenizer = load_tokenizer(self.model_dir, self.max_seq_length)
        self.pad_id = pad_token_id(self.tokenizer)

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

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        return tokenize(self.tokenizer, texts)

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        input_ids, attention_mask = pad_batch(batch, self.pad_id)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run(None, feed)[0]
        vectors = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_tokenized(self.tokenize(texts))
