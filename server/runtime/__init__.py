"""Inference runtimes behind one interface: tokenize, then embed a batch of tokenized texts.

Runtimes are imported lazily so that each server image carries only its own runtime (no torch
in the ONNX or OpenVINO image, no onnxruntime in the others)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.manifest import ModelInfo
from server.runtime.base import Embedder, TokenizedText

if TYPE_CHECKING:
    from server.runtime.onnx_embedder import OnnxEmbedder

__all__ = [
    "Embedder",
    "OnnxEmbedder",
    "TokenizedText",
    "create_embedder",
    "installed_versions",
    "library_versions",
]

# The libraries each runtime serves with: reported by /info and part of the results' key.
RUNTIME_LIBRARIES = {
    "onnx": ("onnxruntime", "tokenizers"),
    "openvino": ("openvino", "tokenizers"),
    "torch": ("torch", "transformers", "sentence-transformers", "tokenizers"),
}


def create_embedder(
    runtime: str,
    model_dir: Path,
    *,
    model_info: ModelInfo | None,
    options: dict[str, str] | None = None,
    threads: int | None = None,
    workers: int = 1,
    spinning: bool = False,
    inter_op_threads: int | None = None,
    graph_optimization_level: str | None = None,
) -> Embedder:
    """The runtime's embedder for a prepared variant; `options` are the manifest's
    runtime_options. The server and the parity gate both open variants here. `spinning`
    and `graph_optimization_level` are ONNX Runtime's, `inter_op_threads` ONNX Runtime's and
    PyTorch's (None: the runtime's default); the other runtimes have no such option."""
    options = options or {}
    if runtime == "onnx":
        from server.runtime.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(
            model_dir,
            intra_op_threads=threads,
            thread_spinning=spinning,
            model_info=model_info,
            inter_op_threads=inter_op_threads,
            graph_optimization_level=graph_optimization_level or "all",
        )
    if runtime == "openvino":
        from server.runtime.openvino_embedder import OpenVinoEmbedder

        if model_info is None:
            raise ValueError("the openvino runtime needs the variant's model info (manifest)")
        return OpenVinoEmbedder(
            model_dir,
            model_info=model_info,
            intra_op_threads=threads,
            streams=workers,
            inference_precision=options.get("inference_precision", "f32"),
        )
    if runtime == "torch":
        from server.runtime.torch_embedder import TorchEmbedder

        return TorchEmbedder(
            model_dir,
            intra_op_threads=threads,
            inter_op_threads=inter_op_threads,
            model_info=model_info,
            dtype=options.get("dtype", "float32"),
        )
    raise ValueError(f"unknown runtime {runtime!r}; expected onnx, openvino or torch")


def library_versions(runtime: str) -> dict[str, str]:
    return installed_versions(RUNTIME_LIBRARIES[runtime])


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Each distribution's installed version, "absent" where it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def __getattr__(name: str) -> Any:
    if name == "OnnxEmbedder":
        from server.runtime.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
