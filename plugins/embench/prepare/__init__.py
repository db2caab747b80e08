"""Model preparation: ONNX export, graph optimization, int8 quantization, parity gate, cache."""

from embench.prepare.pipeline import PreparedVariant, prepare_model

__all__ = ["PreparedVariant", "prepare_model"]
