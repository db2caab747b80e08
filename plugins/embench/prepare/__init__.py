"""Model preparation per runtime (ONNX export, optimization, int8; OpenVINO conversion, bf16,
int8; the PyTorch model itself), each variant behind its parity gate, cached."""

from embench.prepare.pipeline import PreparedVariant, prepare_model, prepare_targets

__all__ = ["PreparedVariant", "prepare_model", "prepare_targets"]
