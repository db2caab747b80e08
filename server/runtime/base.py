"""The interface every runtime implements, so batching and the API do not care which one runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class TokenizedText:
    ids: list[int]
    truncated: bool  # longer than max_seq_length; the tail was cut off

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


class Embedder(Protocol):
    runtime: str  # "onnx" or "torch"
    runtime_version: str
    embedding_dim: int
    max_seq_length: int

    def tokenize(self, texts: list[str]) -> list[TokenizedText]: ...

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        """Embeddings (len(batch), dim), float32, in the order of `batch`."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray: ...
