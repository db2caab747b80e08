"""The parity gate: a variant's served embeddings against the PyTorch sentence-transformers
reference, on a fixed text set shipped with the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from embench.prepare.variants import ParityGate
from server.manifest import ModelInfo
from server.runtime.onnx_embedder import OnnxEmbedder

# Texts are embedded in batches of mixed lengths, as the server's dynamic batcher would.
PARITY_BATCH_SIZE = 8


def parity_texts() -> list[str]:
    data = resources.files("embench").joinpath("data/parity_texts.json").read_text("utf-8")
    return list(json.loads(data)["texts"])


@dataclass(frozen=True)
class ParityResult:
    cosines: np.ndarray
    gate: ParityGate

    @property
    def mean(self) -> float:
        return float(self.cosines.mean())

    @property
    def min(self) -> float:
        return float(self.cosines.min())

    @property
    def passed(self) -> bool:
        return self.mean >= self.gate.mean_cosine and self.min >= self.gate.min_cosine

    def describe(self) -> str:
        return (
            f"mean cosine {self.mean:.6f} (gate >= {self.gate.mean_cosine}), "
            f"min cosine {self.min:.6f} (gate >= {self.gate.min_cosine}) "
            f"over {len(self.cosines)} texts"
        )


def reference_embeddings(source_dir: Path, texts: list[str], max_seq_length: int) -> np.ndarray:
    """sentence-transformers on PyTorch: the model as its authors run it."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source_dir), device="cpu")
    model.max_seq_length = max_seq_length
    return model.encode(
        texts,
        batch_size=16,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def served_embeddings(model_dir: Path, texts: list[str], model_info: ModelInfo) -> np.ndarray:
    embedder = OnnxEmbedder(model_dir, model_info=model_info)
    batches = [texts[i : i + PARITY_BATCH_SIZE] for i in range(0, len(texts), PARITY_BATCH_SIZE)]
    return np.concatenate([embedder.embed(batch) for batch in batches])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_parity(served: np.ndarray, reference: np.ndarray, gate: ParityGate) -> ParityResult:
    return ParityResult(cosines=row_cosines(served, reference), gate=gate)
