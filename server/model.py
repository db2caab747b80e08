"""Find, check and load the served model for the configured runtime.

EMBENCH_MODEL_DIR is a variant `embench prepare` made for the server's runtime (manifest.json and
the runtime's files: model.onnx, openvino_model.xml/.bin, or a sentence-transformers directory).
runtime=torch also serves a plain sentence-transformers directory, or the source of a variant
prepared for another runtime (a local directory, or an installed package with get_model_path());
EMBENCH_TORCH_SOURCE_DIR overrides the source directory."""

from __future__ import annotations

import hashlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.config import ServerSettings
from server.manifest import MANIFEST_NAME, Manifest, ModelInfo, read_manifest
from server.runtime import create_embedder, library_versions
from server.runtime.base import Embedder


class ModelDirError(ValueError):
    """The model directory is missing, incomplete or unusable for the runtime."""


@dataclass(frozen=True)
class ModelSpec:
    """What will be served, resolved before loading (cheap: reads JSON only)."""

    runtime: str
    load_dir: Path  # the directory the runtime loads
    model_id: str
    variant: str
    manifest: Manifest | None
    manifest_sha256: str | None
    model_info: ModelInfo | None
    runtime_options: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedModel:
    spec: ModelSpec
    embedder: Embedder
    load_s: float
    warmup_s: float = 0.0
    library_versions: dict[str, str] = field(default_factory=dict)


def _read_manifest_checked(model_dir: Path) -> tuple[Manifest, str]:
    path = model_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = read_manifest(model_dir)
    except ValueError as exc:
        raise ModelDirError(f"{path} is not a valid manifest: {exc}") from None
    return manifest, hashlib.sha256(raw).hexdigest()


def _source_dir(manifest: Manifest) -> Path:
    source = manifest.source
    if source.kind == "local":
        return Path(source.ref)
    if source.kind == "package":
        module_name = source.ref.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ModelDirError(
                f"the manifest's source is the package {source.ref!r}, which is not installed; "
                "set EMBENCH_MODEL_DIR (or EMBENCH_TORCH_SOURCE_DIR) to the "
                "sentence-transformers directory instead"
            ) from None
        return Path(module.get_model_path())
    raise ModelDirError(
        f"the manifest's source is {source.kind} {source.ref!r}; set EMBENCH_TORCH_SOURCE_DIR "
        "to its local sentence-transformers directory"
    )


# The files a prepared variant of each runtime must hold besides its manifest.
REQUIRED_FILES = {
    "onnx": ("model.onnx", "tokenizer.json"),
    "openvino": ("openvino_model.xml", "openvino_model.bin", "tokenizer.json"),
    "torch": ("modules.json", "tokenizer.json"),
}


def resolve_model(settings: ServerSettings) -> ModelSpec:
    model_dir = settings.model_dir
    if not model_dir.is_dir():
        raise ModelDirError(f"EMBENCH_MODEL_DIR={str(model_dir)!r} is not a directory")
    has_manifest = (model_dir / MANIFEST_NAME).is_file()
    manifest, digest = _read_manifest_checked(model_dir) if has_manifest else (None, None)

    if manifest is not None and manifest.runtime == settings.runtime:
        for name in REQUIRED_FILES[settings.runtime]:
            if not (model_dir / name).is_file():
                raise ModelDirError(f"EMBENCH_MODEL_DIR={str(model_dir)!r} has no {name}")
        return ModelSpec(
            runtime=settings.runtime,
            load_dir=model_dir,
            model_id=manifest.model_id,
            variant=manifest.variant,
            manifest=manifest,
            manifest_sha256=digest,
            model_info=manifest.model,
            runtime_options=dict(manifest.runtime_options),
        )
    if settings.runtime != "torch":
        if manifest is None:
            raise ModelDirError(
                f"EMBENCH_MODEL_DIR={str(model_dir)!r} has no {MANIFEST_NAME}: "
                "point it at a variant prepared by `embench prepare`"
            )
        raise ModelDirError(
            f"EMBENCH_MODEL_DIR={str(model_dir)!r} holds a variant prepared for the "
            f"{manifest.runtime} runtime; this server runs {settings.runtime} (EMBENCH_RUNTIME): "
            f"prepare it with `embench prepare --runtime {settings.runtime}`"
        )

    # torch also serves a plain sentence-transformers directory, or the source of a variant
    # prepared for another runtime (the PyTorch baseline of that very model).
    from server.runtime.torch_embedder import is_sentence_transformers_dir

    if settings.torch_source_dir is not None:
        source = settings.torch_source_dir
    elif is_sentence_transformers_dir(model_dir):
        source = model_dir
    elif manifest is not None:
        source = _source_dir(manifest)
    else:
        raise ModelDirError(
            f"EMBENCH_MODEL_DIR={str(model_dir)!r} is neither a sentence-transformers directory "
            f"(modules.json) nor a prepared variant ({MANIFEST_NAME})"
        )
    if not is_sentence_transformers_dir(source) or not (source / "tokenizer.json").is_file():
        raise ModelDirError(
            f"{str(source)!r} is not a sentence-transformers directory with a tokenizer.json"
        )
    return ModelSpec(
        runtime="torch",
        load_dir=source,
        model_id=manifest.model_id if manifest else source.name,
        variant="fp32",
        manifest=manifest,
        manifest_sha256=digest,
        model_info=manifest.model if manifest else None,
    )


def load_model(settings: ServerSettings, spec: ModelSpec | None = None) -> LoadedModel:
    """Load the runtime (seconds). Call off the event loop."""
    spec = spec or resolve_model(settings)
    started = time.perf_counter()
    embedder = create_embedder(
        spec.runtime,
        spec.load_dir,
        model_info=spec.model_info,
        options=spec.runtime_options,
        threads=settings.threads,
        workers=settings.workers,
        spinning=settings.spinning,
        inter_op_threads=settings.applied("inter_op_threads"),
        graph_optimization_level=settings.applied("graph_optimization_level"),
    )
    return LoadedModel(
        spec=spec,
        embedder=embedder,
        load_s=time.perf_counter() - started,
        library_versions=library_versions(spec.runtime),
    )


WARMUP_TEXTS = [
    "warm-up",
    "A warm-up sentence of moderate length, to touch the usual code paths once.",
    " ".join(["long warm-up text"] * 40),
]


def warm_up(embedder: Embedder) -> float:
    """Run a few batches of different shapes so the first real request pays no first-run cost."""
    started = time.perf_counter()
    tokenized = embedder.tokenize(WARMUP_TEXTS)
    for batch in ([tokenized[0]], tokenized[:2], tokenized, tokenized * 4):
        embedder.embed_tokenized(batch)
    return time.perf_counter() - started
