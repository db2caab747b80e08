"""What each variant is: its build settings (part of the cache key) and its parity gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXPORT_SETTINGS: dict[str, Any] = {
    "exporter": "optimum",
    "task": "feature-extraction",
    # Export the bare transformer: pooling and normalization run in the server's code.
    "library_name": "transformers",
    "opset": 17,
}

VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "fp32": {"export": EXPORT_SETTINGS},
    "optimized": {
        "export": EXPORT_SETTINGS,
        # ONNX Runtime's transformer fusions (attention, layer norm, GELU) saved offline, at a
        # level whose result does not depend on the CPU it was built on.
        "optimize": {"tool": "onnxruntime.transformers.optimizer", "opt_level": 1},
    },
    "int8": {
        "export": EXPORT_SETTINGS,
        # Dynamic int8 tuned for accuracy on VNNI/AMX CPUs: per-channel weight scales, full
        # 8-bit range (reduce_range only helps CPUs without VNNI), MatMul only, and the FFN
        # down-projections kept in fp32: their activations carry the outliers that cost a naive
        # export its accuracy (mean cosine 0.96 -> 0.997 on MiniLM).
        "quantize": {
            "method": "dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "reduce_range": False,
            "op_types": ["MatMul"],
            "exclude_nodes_matching": r"/layer\.\d+/output/dense/MatMul$",
        },
    },
}


@dataclass(frozen=True)
class ParityGate:
    mean_cosine: float
    min_cosine: float


PARITY_GATES: dict[str, ParityGate] = {
    "fp32": ParityGate(mean_cosine=0.9999, min_cosine=0.999),
    "optimized": ParityGate(mean_cosine=0.9999, min_cosine=0.999),
    "int8": ParityGate(mean_cosine=0.99, min_cosine=0.97),
}
