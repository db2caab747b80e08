"""Inference runtimes behind one interface: tokenize, then embed a batch of tokenized texts."""

from server.runtime.base import Embedder, TokenizedText
from server.runtime.onnx_embedder import OnnxEmbedder

__all__ = ["Embedder", "OnnxEmbedder", "TokenizedText"]
