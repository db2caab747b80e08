"""Sentence pooling and normalization: the one implementation, for serving and the parity gate."""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, attention_mask: np.ndarray, method: str) -> np.ndarray:
    """Pool token states (batch, seq, dim) into sentence vectors (batch, dim)."""
    if method == "cls":
        return hidden[:, 0, :]
    if method == "mean":
        mask = attention_mask[:, :, None].astype(hidden.dtype)
        summed = (hidden * mask).sum(axis=1)
        counts = np.clip(mask.sum(axis=1), 1e-9, None)
        return summed / counts
    raise ValueError(f"unknown pooling method {method!r}; expected 'mean' or 'cls'")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)
