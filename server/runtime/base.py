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
    runtime: str  # "onnx", "torch" or "openvino"
    runtime_version: str
    embedding_dim: int
    max_seq_length: int

    def tokenize(self, texts: list[str]) -> list[TokenizedText]: ...

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        """Embeddings (len(batch), dim), float32, in the order of `batch`."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def pad_batch(batch: list[TokenizedText], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask (int64), padded to the batch's own longest text."""
    longest = max(item.n_tokens for item in batch)
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, item in enumerate(batch):
        input_ids[row, : item.n_tokens] = item.ids
        attention_mask[row, : item.n_tokens] = 1
    return input_ids, attention_mask
