"""OpenVINO inference of a prepared variant (openvino_model.xml/.bin, converted from the same ONNX
export the ONNX Runtime variants serve): the shared tokenizer, one CPU stream per inference
worker, pooling and normalization by the shared code. The parity gate calls this very code."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from server.manifest import ModelInfo
from server.pooling import l2_normalize, pool
from server.runtime.base import TokenizedText, pad_batch
from server.runtime.tokenizer import load_tokenizer, pad_token_id, tokenize

MODEL_XML = "openvino_model.xml"


class OpenVinoEmbedder:
    runtime = "openvino"
    runtime_version = ov.get_version()

    def __init__(
        self,
        model_dir: Path,
        *,
        model_info: ModelInfo,
        intra_op_threads: int | None = None,
        streams: int = 1,
        inference_precision: str = "f32",
    ) -> None:
        """`inference_precision` is OpenVINO's INFERENCE_PRECISION_HINT: set always, because on
        CPUs with AMX the plugin's default is bf16, which would make an "fp32" variant bf16."""
        self.model_dir = Path(model_dir)
        self.max_seq_length = model_info.max_seq_length
        self.embedding_dim = model_info.embedding_dim
        self.pooling = model_info.pooling
        self.normalize = model_info.normalize
        self.tokenizer = load_tokenizer(self.model_dir, self.max_seq_length)
        self.pad_id = pad_token_id(self.tokenizer)
        config = {
            "INFERENCE_PRECISION_HINT": inference_precision,
            # One stream per inference worker: concurrent batches run side by side, each on
            # its own threads, as ONNX Runtime's workers do on one session.
            "NUM_STREAMS": str(streams),
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "ENABLE_CPU_PINNING": "NO",  # the container's cpuset already places the server
        }
        if intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = str(intra_op_threads * streams)
        core = ov.Core()
        self.compiled = core.compile_model(str(self.model_dir / MODEL_XML), "CPU", config)
        self.input_names = {port.get_any_name() for port in self.compiled.inputs}
        self.intra_op_threads = intra_op_threads
        self.inference_precision = inference_precision
        self._local = threading.local()  # an infer request per worker thread

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        return tokenize(self.tokenizer, texts)

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        input_ids, attention_mask = pad_batch(batch, self.pad_id)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self._request().infer(feed)[self.compiled.output(0)]
        vectors = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_tokenized(self.tokenize(texts))
