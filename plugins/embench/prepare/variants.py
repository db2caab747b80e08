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
        # 8-bit range (reduce_range only helps CPUs without VNNI), MatMul only. Activations get
        # one scale per tensor, so a few outlier channels set the step for all: the FFN
        # down-projections (GELU outputs up to ~100) stay fp32, and the other MatMuls' inputs
        # are smoothed first (SmoothQuant, calibrated on corpus texts, never the parity texts).
        # Mean cosine: MiniLM 0.995 -> 0.999, MPNet 0.988 -> 0.999.
        "quantize": {
            "method": "dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "reduce_range": False,
            "op_types": ["MatMul"],
            "exclude_nodes_matching": r"/layer\.\d+/output/dense/MatMul$",
            "smooth_activations": {
                "alpha": 0.7,
                "calibration_texts": 64,
                "calibration_batch": 8,
                "seed": 0,
            },
        },
    },
}


OPENVINO_CONVERT: dict[str, Any] = {
    # OpenVINO's own converter on the same ONNX export the ONNX Runtime variants serve
    # (optimum-intel would convert from PyTorch, but it needs optimum 2.3, which optimum-onnx
    # 0.1.0's export cannot run beside).
    "export": EXPORT_SETTINGS,
    "convert": {"tool": "openvino.convert_model", "compress_to_fp16": False},
}

# Per runtime, per variant: build settings (part of the cache key). `runtime_options` go into
# the manifest and tell the server's runtime how to open the files.
RUNTIME_VARIANT_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "onnx": VARIANT_SETTINGS,
    # The sentence-transformers model itself, copied as it is: PyTorch eager, the reference.
    "torch": {
        "fp32": {
            "copy": "sentence-transformers directory",
            "runtime_options": {"dtype": "float32"},
        },
        "bf16": {
            "copy": "sentence-transformers directory",
            "runtime_options": {"dtype": "bfloat16"},
        },
    },
    "openvino": {
        # The hint is always set: on CPUs with AMX the CPU plugin would otherwise run bf16.
        "fp32": {**OPENVINO_CONVERT, "runtime_options": {"inference_precision": "f32"}},
        "bf16": {**OPENVINO_CONVERT, "runtime_options": {"inference_precision": "bf16"}},
        "int8": {
            **OPENVINO_CONVERT,
            # Static int8 (weights and activations) with NNCF's transformer scheme, which keeps
            # softmax, layer norms and the other sensitive ops in floating point; calibrated on
            # texts cut from the load client's corpus, never on the parity texts. The nodes
            # ONNX Runtime's int8 keeps in fp32 stay out here too (MiniLM: min cosine 0.926 ->
            # 0.990); the rest runs in bf16 where the CPU has it (3.5x fp32 against 1.6x in f32).
            "quantize": {
                "tool": "nncf.quantize",
                "model_type": "transformer",
                "calibration_texts": 128,
                "calibration_batch": 8,
                "seed": 0,
                "exclude_nodes_matching": VARIANT_SETTINGS["int8"]["quantize"][
                    "exclude_nodes_matching"
                ],
            },
            "runtime_options": {"inference_precision": "bf16"},
        },
    },
    # The peer infinity-emb serves the ONNX fp32 export with its own ONNX Runtime engine. The
    # gate here checks the file with our ONNX Runtime code; the served vectors are checked
    # again through its API before it is measured (steps.run_benchmark).
    "infinity": {
        "fp32": {
            **VARIANT_SETTINGS["fp32"],
            "serve": {
                "server": "infinity-emb",
                "engine": "optimum",
                "pooling": "mean",
                "truncate_at": "max_seq_length",  # config.json's max_position_embeddings
            },
            "gate_runtime": "onnx",
        }
    },
}

# An external server's entry: its model's tokenizer (for the client's text lengths) and the
# reference vectors, for the parity check through its API (there is nothing to build).
EXTERNAL_SETTINGS: dict[str, Any] = {"copy": "tokenizer files", "runtime": "external"}


@dataclass(frozen=True)
class ParityGate:
    mean_cosine: float
    min_cosine: float


# By precision, for every runtime.
PARITY_GATES: dict[str, ParityGate] = {
    "fp32": ParityGate(mean_cosine=0.9999, min_cosine=0.999),
    "bf16": ParityGate(mean_cosine=0.999, min_cosine=0.99),
    "optimized": ParityGate(mean_cosine=0.9999, min_cosine=0.999),
    "int8": ParityGate(mean_cosine=0.99, min_cosine=0.97),
}
