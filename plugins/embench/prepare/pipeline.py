"""prepare_model: resolve the source, then per variant return the cached artifact or build it
(export -> optimize | quantize -> parity gate -> manifest) and publish it to the cache."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from embench.config import AppConfig, ModelConfig
from embench.config.schema import ALL_VARIANTS
from embench.errors import EmbenchError, ParityError
from embench.paths import cache_dir
from embench.prepare import build
from embench.prepare.cache import ArtifactCache, cache_key
from embench.prepare.parity import (
    ParityResult,
    check_parity,
    parity_texts,
    reference_embeddings,
    served_embeddings,
)
from embench.prepare.source import ResolvedSource, resolve_source
from embench.prepare.variants import PARITY_GATES, VARIANT_SETTINGS
from server.manifest import (
    MANIFEST_NAME,
    FileInfo,
    Manifest,
    ModelInfo,
    ParityInfo,
    SourceInfo,
    file_sha256,
)

log = logging.getLogger(__name__)

# Bump when the build code changes in a way that changes artifacts.
PREPARE_CODE_VERSION = 1
KEYED_LIBRARIES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "tokenizers",
)


@dataclass(frozen=True)
class PreparedVariant:
    model_id: str
    variant: str
    directory: Path
    manifest: Manifest
    cache_hit: bool
    seconds: float

    @property
    def manifest_sha256(self) -> str:
        return file_sha256(self.directory / MANIFEST_NAME)


@dataclass
class _BuildContext:
    """Work shared by the variants built in one call: one export, one reference."""

    model_id: str
    model: ModelConfig
    source: ResolvedSource
    workdir: Path
    _exported: Path | None = None
    _reference: np.ndarray | None = None
    texts: list[str] = field(default_factory=parity_texts)

    def exported(self) -> Path:
        if self._exported is None:
            out = self.workdir / "export"
            out.mkdir()
            log.info("exporting %s to ONNX", self.model_id)
            build.export_onnx(
                self.source.directory,
                out,
                VARIANT_SETTINGS["fp32"]["export"],
                self.model.max_seq_length,
            )
            self._exported = out
        return self._exported

    def reference(self) -> np.ndarray:
        if self._reference is None:
            log.info("computing the PyTorch reference embeddings of %s", self.model_id)
            self._reference = reference_embeddings(
                self.source.directory, self.texts, self.model.max_seq_length
            )
        return self._reference


def library_versions() -> dict[str, str]:
    versions = {}
    for name in KEYED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def prepare_model(
    config: AppConfig,
    model_id: str,
    variants: list[str] | None = None,
    *,
    cache_root: Path | None = None,
    force: bool = False,
) -> list[PreparedVariant]:
    """Return every requested variant of the model, built and parity-checked or from cache."""
    model = config.model(model_id)
    variants = list(variants or model.variants)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise EmbenchError(
            f"unknown variant {unknown[0]!r}; expected one of: {', '.join(ALL_VARIANTS)}"
        )
    if model.source.kind != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never ask a hub
    cache = ArtifactCache(cache_root or cache_dir())
    source = resolve_source(model_id, model, config.config_dir, cache.root)
    versions = library_versions()

    results: list[PreparedVariant] = []
    with cache.staging_dir() as workdir:
        context = _BuildContext(model_id, model, source, workdir)
        for variant in variants:
            started = time.perf_counter()
            key = cache_key(
                {
                    "code": PREPARE_CODE_VERSION,
                    "source": source.content_sha256,
                    # a split archive's pinned hash (other kinds: the key they always had)
                    **({"source_archive": source.revision} if source.kind == "pypi_parts" else {}),
                    "variant": variant,
                    "settings": VARIANT_SETTINGS[variant],
                    "model": _model_info(model).model_dump(),
                    "libraries": versions,
                }
            )
            manifest = None if force else cache.lookup(model_id, variant, key)
            hit = manifest is not None
            if manifest is None:
                with cache.locked(model_id, variant, key):
                    manifest = None if force else cache.lookup(model_id, variant, key)
                    hit = manifest is not None  # another process built it while we waited
                    if manifest is None:
                        manifest = _build_variant(context, cache, variant, key, versions)
            results.append(
                PreparedVariant(
                    model_id=model_id,
                    variant=variant,
                    directory=cache.entry_dir(model_id, variant, key),
                    manifest=manifest,
                    cache_hit=hit,
                    seconds=time.perf_counter() - started,
                )
            )
    return results


def _build_variant(
    context: _BuildContext,
    cache: ArtifactCache,
    variant: str,
    key: str,
    versions: dict[str, str],
) -> Manifest:
    started = time.perf_counter()
    settings = VARIANT_SETTINGS[variant]
    exported = context.exported()
    staged = context.workdir / f"variant-{variant}"
    staged.mkdir()
    build.copy_tokenizer_files(exported, staged)
    target = staged / "model.onnx"
    extra: dict[str, object] = {}
    log.info("building %s/%s", context.model_id, variant)
    if "optimize" in settings:
        model_type = build.hf_model_type(context.source.directory)
        build.optimize_onnx(exported / "model.onnx", target, settings["optimize"], model_type)
    elif "quantize" in settings:
        kept = build.quantize_onnx(exported / "model.onnx", target, settings["quantize"])
        extra["nodes_kept_fp32"] = len(kept)
    else:
        shutil.copy2(exported / "model.onnx", target)

    served = served_embeddings(staged, context.texts, _model_info(context.model))
    parity = check_parity(served, context.reference(), PARITY_GATES[variant])
    if not parity.passed:
        raise ParityError(
            f"{context.model_id}/{variant} failed its parity gate against the PyTorch "
            f"reference: {parity.describe()}; the variant was not cached"
        )
    manifest = _manifest(context, variant, key, settings | extra, versions, staged, parity, started)
    (staged / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    cache.publish(staged, context.model_id, variant, key)
    log.info("%s/%s: %s", context.model_id, variant, parity.describe())
    return manifest


def _model_info(model: ModelConfig) -> ModelInfo:
    return ModelInfo(
        max_seq_length=model.max_seq_length,
        embedding_dim=model.embedding_dim,
        pooling=model.pooling,
        normalize=model.normalize,
    )


def _manifest(
    context: _BuildContext,
    variant: str,
    key: str,
    settings: dict[str, object],
    versions: dict[str, str],
    staged: Path,
    parity: ParityResult,
    started: float,
) -> Manifest:
    files = {
        path.name: FileInfo(sha256=file_sha256(path), size=path.stat().st_size)
        for path in sorted(staged.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    return Manifest(
        model_id=context.model_id,
        display_name=context.model.display_name,
        variant=variant,
        cache_key=key,
        source=SourceInfo(
            kind=context.source.kind,
            ref=context.source.ref,
            revision=context.source.revision,
            content_sha256=context.source.content_sha256,
        ),
        model=_model_info(context.model),
        settings=settings,
        library_versions=versions,
        files=files,
        onnx_size_bytes=files["model.onnx"].size,
        build_seconds=round(time.perf_counter() - started, 3),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parity=ParityInfo(
            reference=(
                f"sentence-transformers {versions['sentence-transformers']} "
                f"(torch {versions['torch']})"
            ),
            texts=len(parity.cosines),
            mean_cosine=parity.mean,
            min_cosine=parity.min,
            gate_mean=parity.gate.mean_cosine,
            gate_min=parity.gate.min_cosine,
            passed=parity.passed,
        ),
    )
