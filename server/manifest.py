"""manifest.json of a prepared model variant: written by `embench prepare`, read by the server.

The schema lives here, with its reader, because the server must not import the pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 2
# ours, then the peers (infinity-emb serves what prepare built; external: only the reference)
Runtime = Literal["onnx", "torch", "openvino", "infinity", "external"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceInfo(_Frozen):
    kind: Literal["package", "local", "hub", "pypi_parts"]
    ref: str  # package name, directory, hub repo id, or the parts (comma-separated)
    revision: str | None = None  # hub: the revision; pypi_parts: the joined archive's sha256
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
    runtime: Runtime
    variant: str
    # How the runtime opens the files, e.g. {"dtype": "bfloat16"} (torch) or
    # {"inference_precision": "bf16"} (openvino); the server passes them on.
    runtime_options: dict[str, str] = {}
    cache_key: str
    source: SourceInfo
    model: ModelInfo
    settings: dict[str, object]
    library_versions: dict[str, str]
    files: dict[str, FileInfo]
    model_bytes: int  # the weights' files (model.onnx, openvino_model.bin, model.safetensors)
    build_seconds: float
    built_at: str
    # None only for an external server's entry: its parity is checked through its API
    parity: ParityInfo | None


def read_manifest(model_dir: Path) -> Manifest:
    return Manifest.model_validate_json((model_dir / MANIFEST_NAME).read_bytes())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(model_dir: Path, manifest: Manifest | None = None) -> list[str]:
    """What is wrong with the files of a prepared variant against its manifest (empty: all
    present with their recorded size and sha256)."""
    manifest = manifest or read_manifest(model_dir)
    problems = []
    for name, info in manifest.files.items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != info.size or file_sha256(path) != info.sha256:
            problems.append(f"{name} does not match its recorded sha256")
    return problems


VERIFIED_MARK = ".embench-verified"


def main(argv: list[str] | None = None) -> int:
    """`python -m server.manifest verify DIR [--mark]`: check a variant shipped to a host;
    with --mark, record the manifest's sha256 in DIR/.embench-verified when it passes."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m server.manifest")
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--mark", action="store_true")
    args = parser.parse_args(argv)
    try:
        problems = check_files(args.model_dir)
    except (OSError, ValueError) as exc:
        problems = [f"unreadable manifest: {exc}"]
    if problems:
        print(f"{args.model_dir}: " + "; ".join(problems), file=sys.stderr)
        return 1
    if args.mark:
        digest = hashlib.sha256((args.model_dir / MANIFEST_NAME).read_bytes()).hexdigest()
        (args.model_dir / VERIFIED_MARK).write_text(digest)
    print(f"{args.model_dir}: every file matches the manifest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
