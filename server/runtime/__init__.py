"""Inference runtimes behind one interface: tokenize, then embed a batch of tokenized texts.

Runtimes are imported lazily so that the ONNX image needs no torch and the torch image needs
no onnxruntime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.runtime.base import Embedder, TokenizedText

if TYPE_CHECKING:
    from server.runtime.onnx_embedder import OnnxEmbedder

__all__ = ["Embedder", "OnnxEmbedder", "TokenizedText"]


def __getattr__(name: str) -> Any:
    if name == "OnnxEmbedder":
        from server.runtime.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
