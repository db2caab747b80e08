"""manifest.json of a prepared model variant: written by `embench prepare`, read by the server.

The schema lives here, with its reader, because the server must not import the pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceInfo(_Frozen):
    kind: Literal["package", "local", "hub"]
    ref: str  # package name, directory, or hub repo id
    revision: str | None = None
    content_sha256: str


class ModelInfo(_Frozen):
    max_seq_length: int
    embedding_dim: int
    pooling: Literal["mean", "cls"]
    normalize: bool


class FileInfo(_Frozen):
    sha256: str
    size: int


class ParityInfo(_Frozen):
    reference: str  # e.g. "sentence-transformers 5.7.0 (torch 2.13.0)"
    texts: int
    mean_cosine: float
    min_cosine: float
    gate_mean: float
    gate_min: float
    passed: bool


class Manifest(_Frozen):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    model_id: str
    display_name: str
    variant: str
    cache_key: str
    source: SourceInfo
    model: ModelInfo
    settings: dict[str, object]
    library_versions: dict[str, str]
    files: dict[str, FileInfo]
    onnx_size_bytes: int
    build_seconds: float
    built_at: str
    parity: ParityInfo


def read_manifest(model_dir: Path) -> Manifest:
    return Manifest.model_validate_json((model_dir / MANIFEST_NAME).read_bytes())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
