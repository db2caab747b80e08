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
from server.runtime import create_embedder

# Texts are embedded in batches of mixed lengths, as the server's dynamic batcher would.
PARITY_BATCH_SIZE = 8
# In every prepared entry: the reference vectors of the parity texts (float32, a row a text),
# for the same gate through a server's API (embench.served_parity).
REFERENCE_FILE = "parity_reference.npy"


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


def calibration_texts(count: int, seed: int) -> list[str]:
    """Texts for calibrating a quantizer, cut from the load client's corpus (spans of 8-128
    words at seeded places): what the server will see, and none of the parity texts."""
    import random

    from client.workload import load_corpus

    words = load_corpus().words
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.choice((8, 16, 32, 64, 128))
        start = rng.randrange(len(words) - length)
        texts.append(" ".join(words[start : start + length]))
    return texts


def served_embeddings(
    runtime: str,
    model_dir: Path,
    texts: list[str],
    model_info: ModelInfo,
    options: dict[str, str] | None = None,
) -> np.ndarray:
    """The staged variant's embeddings through the server's own runtime code."""
    embedder = create_embedder(runtime, model_dir, model_info=model_info, options=options)
    batches = [texts[i : i + PARITY_BATCH_SIZE] for i in range(0, len(texts), PARITY_BATCH_SIZE)]
    return np.concatenate([embedder.embed(batch) for batch in batches])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_parity(served: np.ndarray, reference: np.ndarray, gate: ParityGate) -> ParityResult:
    return ParityResult(cosines=row_cosines(served, reference), gate=gate)
