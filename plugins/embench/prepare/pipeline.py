"""prepare_model: resolve the source, then per (runtime, variant) return the cached artifact or
build it and publish it to the cache:

    onnx:     export -> optimize | quantize  -> parity gate -> manifest
    openvino: export -> convert [-> quantize] -> parity gate -> manifest
    torch:    copy the sentence-transformers directory -> parity gate -> manifest
    infinity: the onnx fp32 export (served by the peer infinity-emb) -> parity gate -> manifest
    external: the tokenizer files -> manifest (a server the user runs: nothing to build)

Every parity gate runs the server's own runtime code on the staged files. Every entry keeps
the reference vectors of the parity texts (REFERENCE_FILE), so that a served target is checked
again through its API before it is measured (embench.served_parity)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embench.config import AppConfig, ModelConfig
from embench.config.schema import EXTERNAL_RUNTIME, RUNTIME_VARIANTS
from embench.errors import EmbenchError, ParityError
from embench.paths import cache_dir
from embench.prepare import build
from embench.prepare.cache import ArtifactCache, cache_key
from embench.prepare.parity import (
    REFERENCE_FILE,
    ParityResult,
    check_parity,
    parity_texts,
    reference_embeddings,
    served_embeddings,
)
from embench.prepare.source import ResolvedSource, resolve_source
from embench.prepare.variants import (
    EXTERNAL_SETTINGS,
    PARITY_GATES,
    RUNTIME_VARIANT_SETTINGS,
    VARIANT_SETTINGS,
)
from server.manifest import (
    MANIFEST_NAME,
    FileInfo,
    Manifest,
    ModelInfo,
    ParityInfo,
    SourceInfo,
    file_sha256,
)
from server.runtime import installed_versions

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".onnx", ".bin", ".safetensors")

# Bump when the build code changes in a way that changes artifacts.
PREPARE_CODE_VERSION = 3
KEYED_LIBRARIES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
    "tokenizers",
)


@dataclass(frozen=True)
class PreparedVariant:
    model_id: str
    runtime: str
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
    _openvino_ir: Path | None = None
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

    def openvino_ir(self, settings: dict[str, Any]) -> Path:
        """The export converted to OpenVINO IR once, for every OpenVINO variant."""
        if self._openvino_ir is None:
            out = self.workdir / "openvino-ir"
            out.mkdir()
            log.info("converting %s to OpenVINO IR", self.model_id)
            build.convert_openvino(self.exported() / "model.onnx", out, settings)
            self._openvino_ir = out
        return self._openvino_ir

    def reference(self) -> np.ndarray:
        if self._reference is None:
            log.info("computing the PyTorch reference embeddings of %s", self.model_id)
            self._reference = reference_embeddings(
                self.source.directory, self.texts, self.model.max_seq_length
            )
        return self._reference


def prepare_model(
    config: AppConfig,
    model_id: str,
    variants: list[str] | None = None,
    *,
    runtime: str = "onnx",
    cache_root: Path | None = None,
    force: bool = False,
) -> list[PreparedVariant]:
    """Every requested variant of the model for one runtime (default: the variants
    models.yaml lists for it), built and parity-checked or from cache."""
    _check_runtime(runtime)
    listed = config.model(model_id).runtimes.get(runtime) or RUNTIME_VARIANTS[runtime]
    targets = [(runtime, variant) for variant in variants or listed]
    return prepare_targets(config, model_id, targets, cache_root=cache_root, force=force)


def prepare_targets(
    config: AppConfig,
    model_id: str,
    targets: list[tuple[str, str]] | None = None,
    *,
    cache_root: Path | None = None,
    force: bool = False,
) -> list[PreparedVariant]:
    """Every requested (runtime, variant) of the model (default: all that models.yaml lists),
    built and parity-checked or from cache; one export and one reference serve them all."""
    model = config.model(model_id)
    targets = list(targets or model.targets())
    for runtime, variant in targets:
        if runtime == EXTERNAL_RUNTIME:
            if config.external(variant).model != model_id:
                raise EmbenchError(
                    f"the external server {variant!r} serves {config.external(variant).model}, "
                    f"not {model_id}"
                )
            continue
        _check_runtime(runtime)
        if variant not in RUNTIME_VARIANTS[runtime]:
            raise EmbenchError(
                f"unknown variant {variant!r} for the {runtime} runtime; expected one of: "
                f"{', '.join(RUNTIME_VARIANTS[runtime])}"
            )
    if model.source.kind != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never ask a hub
    cache = ArtifactCache(cache_root or cache_dir())
    source = resolve_source(model_id, model, config.config_dir, cache.root)
    versions = installed_versions(KEYED_LIBRARIES)

    results: list[PreparedVariant] = []
    with cache.staging_dir() as workdir:
        context = _BuildContext(model_id, model, source, workdir)
        for runtime, variant in targets:
            started = time.perf_counter()
            name = artifact_name(runtime, variant)
            key = cache_key(
                {
                    "code": PREPARE_CODE_VERSION,
                    "source": source.content_sha256,
                    # a split archive's pinned hash (other kinds: the key they always had)
                    **({"source_archive": source.revision} if source.kind == "pypi_parts" else {}),
                    "runtime": runtime,
                    # every external server of a model shares one entry
                    "variant": None if runtime == EXTERNAL_RUNTIME else variant,
                    "settings": build_settings(runtime, variant),
                    "parity_texts": cache_key({"texts": context.texts}),
                    "model": _model_info(model).model_dump(),
                    "libraries": versions,
                }
            )
            manifest = None if force else cache.lookup(model_id, name, key)
            hit = manifest is not None
            if manifest is None:
                with cache.locked(model_id, name, key):
                    manifest = None if force else cache.lookup(model_id, name, key)
                    hit = manifest is not None  # another process built it while we waited
                    if manifest is None:
                        manifest = _build_variant(context, cache, runtime, variant, key, versions)
            results.append(
                PreparedVariant(
                    model_id=model_id,
                    runtime=runtime,
                    variant=variant,
                    directory=cache.entry_dir(model_id, name, key),
                    manifest=manifest,
                    cache_hit=hit,
                    seconds=time.perf_counter() - started,
                )
            )
    return results


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIME_VARIANTS:
        raise EmbenchError(
            f"unknown runtime {runtime!r}; expected one of: {', '.join(RUNTIME_VARIANTS)}"
        )


def artifact_name(runtime: str, variant: str) -> str:
    """The cache's name for a variant: "onnx-int8", "torch-bf16", ...; "external" for every
    external server (their entries are the same)."""
    return runtime if runtime == EXTERNAL_RUNTIME else f"{runtime}-{variant}"


def build_settings(runtime: str, variant: str) -> dict[str, Any]:
    if runtime == EXTERNAL_RUNTIME:
        return EXTERNAL_SETTINGS
    return RUNTIME_VARIANT_SETTINGS[runtime][variant]


def _build_variant(
    context: _BuildContext,
    cache: ArtifactCache,
    runtime: str,
    variant: str,
    key: str,
    versions: dict[str, str],
) -> Manifest:
    started = time.perf_counter()
    settings = build_settings(runtime, variant)
    name = artifact_name(runtime, variant)
    staged = context.workdir / name
    staged.mkdir()
    log.info("building %s/%s", context.model_id, name)
    extra = BUILDERS[runtime](context, settings, staged)
    np.save(staged / REFERENCE_FILE, context.reference().astype(np.float32))

    parity = None
    if runtime != EXTERNAL_RUNTIME:  # an external server is checked through its API only
        options = dict(settings.get("runtime_options", {}))
        gate_runtime = settings.get("gate_runtime", runtime)
        model_info = _model_info(context.model)
        served = served_embeddings(gate_runtime, staged, context.texts, model_info, options)
        parity = check_parity(served, context.reference(), PARITY_GATES[variant])
        if not parity.passed:
            raise ParityError(
                f"{context.model_id}/{name} failed its parity gate against the PyTorch "
                f"reference: {parity.describe()}; the variant was not cached"
            )
    manifest = _manifest(
        context, runtime, variant, key, settings | extra, versions, staged, parity, started
    )
    (staged / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    cache.publish(staged, context.model_id, name, key)
    log.info("%s/%s: %s", context.model_id, name, parity.describe() if parity else "built")
    return manifest


def _build_onnx(
    context: _BuildContext, settings: dict[str, Any], staged: Path
) -> dict[str, object]:
    exported = context.exported()
    build.copy_tokenizer_files(exported, staged)
    target = staged / "model.onnx"
    if "optimize" in settings:
        model_type = build.hf_model_type(context.source.directory)
        build.optimize_onnx(exported / "model.onnx", target, settings["optimize"], model_type)
    elif "quantize" in settings:
        kept = build.quantize_onnx(exported / "model.onnx", target, settings["quantize"])
        return {"nodes_kept_fp32": len(kept)}
    else:
        shutil.copy2(exported / "model.onnx", target)
    return {}


def _build_openvino(
    context: _BuildContext, settings: dict[str, Any], staged: Path
) -> dict[str, object]:
    exported = context.exported()
    build.copy_tokenizer_files(exported, staged)
    converted = context.openvino_ir(settings["convert"])
    if "quantize" not in settings:
        for name in (build.OPENVINO_XML, build.OPENVINO_BIN):
            shutil.copy2(converted / name, staged / name)
        return {}
    quantize = settings["quantize"]
    feeds = build.calibration_feeds(exported, quantize)
    kept = build.quantize_openvino(converted / build.OPENVINO_XML, staged, quantize, feeds)
    return {"nodes_kept_fp32": len(kept)}


def _build_torch(
    context: _BuildContext, settings: dict[str, Any], staged: Path
) -> dict[str, object]:
    build.copy_sentence_transformers(context.source.directory, staged)
    return {}


def _build_infinity(
    context: _BuildContext, settings: dict[str, Any], staged: Path
) -> dict[str, object]:
    """The onnx fp32 entry, with config.json's max_position_embeddings set to the model's
    max_seq_length: infinity's ONNX engine truncates texts at that length, where the model
    (sentence-transformers) stops at max_seq_length. Without it, a 300-token text gives
    another vector (MiniLM: min cosine 0.954 through its API) and costs twice the work."""
    extra = _build_onnx(context, settings, staged)
    config_path = staged / "config.json"
    model_config = json.loads(config_path.read_text(encoding="utf-8"))
    model_config["max_position_embeddings"] = context.model.max_seq_length
    config_path.write_text(json.dumps(model_config, indent=2), encoding="utf-8")
    return extra


def _build_external(
    context: _BuildContext, settings: dict[str, Any], staged: Path
) -> dict[str, object]:
    build.copy_tokenizer_files(context.source.directory, staged)
    return {}


BUILDERS = {
    "onnx": _build_onnx,
    "openvino": _build_openvino,
    "torch": _build_torch,
    "infinity": _build_infinity,
    EXTERNAL_RUNTIME: _build_external,
}


def _model_info(model: ModelConfig) -> ModelInfo:
    return ModelInfo(
        max_seq_length=model.max_seq_length,
        embedding_dim=model.embedding_dim,
        pooling=model.pooling,
        normalize=model.normalize,
    )


def _manifest(
    context: _BuildContext,
    runtime: str,
    variant: str,
    key: str,
    settings: dict[str, object],
    versions: dict[str, str],
    staged: Path,
    parity: ParityResult | None,
    started: float,
) -> Manifest:
    files = {
        path.relative_to(staged).as_posix(): FileInfo(
            sha256=file_sha256(path), size=path.stat().st_size
        )
        for path in sorted(staged.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    return Manifest(
        model_id=context.model_id,
        display_name=context.model.display_name,
        runtime=runtime,
        variant=variant,
        runtime_options=dict(settings.get("runtime_options", {})),
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
        model_bytes=sum(
            info.size for name, info in files.items() if name.endswith(WEIGHT_SUFFIXES)
        ),
        build_seconds=round(time.perf_counter() - started, 3),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parity=None
        if parity is None
        else ParityInfo(
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
