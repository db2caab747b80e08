"""OpenVINO inference of a prepared variant (openvino_model.xml/.bin, converted from the same ONNX
export the ONNX Runtime variants serve): the shared tokenization, padding, pooling and
normalization around one compiled model, one CPU stream per inference worker. The parity gate
calls this very code."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from server.manifest import ModelInfo
from server.runtime.bare_transformer import BareTransformerEmbedder

MODEL_XML = "openvino_model.xml"


class OpenVinoEmbedder(BareTransformerEmbedder):
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
        super().__init__(model_dir, model_info)
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

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._request().infer(self.feed(input_ids, attention_mask))[self.compiled.output(0)]
