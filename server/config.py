"""Server settings, read once from EMBENCH_* environment variables into a typed model.

Every setting has an environment variable of the same name in upper case with the EMBENCH_
prefix (max_batch_tokens -> EMBENCH_MAX_BATCH_TOKENS). Errors name the variable and the
problem, e.g. "EMBENCH_THREADS='abc': Input should be a valid integer"."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "EMBENCH_"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


# Settings only some runtimes have, and which ones: elsewhere the server ignores them (with a
# warning at start) and /info reports them as null.
RUNTIME_SPECIFIC: dict[str, tuple[str, ...]] = {
    "inter_op_threads": ("onnx", "torch"),
    "graph_optimization_level": ("onnx",),
}


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: Path = Field(
        description="a model variant prepared for the runtime (manifest.json and its files); "
        "for runtime=torch also a sentence-transformers directory"
    )
    runtime: Literal["onnx", "torch", "openvino"] = "onnx"
    threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        le=1024,
        description="intra-op threads of the runtime, per inference worker",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="inference workers: batches run concurrently on one shared session "
        "(e.g. 2 workers x 1 thread instead of 1 x 2 where intra-op scaling is poor)",
    )
    spinning: bool = Field(
        default=False, description="let idle intra-op (and inter-op) threads spin (ONNX Runtime)"
    )
    inter_op_threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="inter-op threads: ONNX Runtime's inter_op_num_threads, run in parallel "
        "execution mode when > 1 (unset: 1, sequential); PyTorch's set_num_interop_threads "
        "(unset: PyTorch's own default); OpenVINO has no inter-op pool (its parallelism "
        "across batches is streams, one per worker): ignored there, with a warning",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all",
        description="ONNX Runtime's graph optimization level (PyTorch and OpenVINO have no "
        "such option: ignored there, with a warning)",
    )
    max_batch_tokens: int = Field(
        default=8192, ge=1, description="padded tokens (texts x longest) per inference batch"
    )
    max_batch_texts: int = Field(default=64, ge=1, description="texts per inference batch")
    max_batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="longest a free worker waits for more texts while a wave of requests is "
        "arriving (never when the queue is empty, never for a lone request); 0: never wait",
    )
    max_texts_per_request: int = Field(default=256, ge=1)
    max_queue: int = Field(
        default=1024, ge=1, description="texts waiting for inference before requests get 429"
    )
    max_queue_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="UTF-8 bytes of the texts of the requests in the server (as received) "
        "before requests get 429",
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="open connections (and requests in progress) before new requests get 503",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a connection that has not sent a request's headers within this many "
        "seconds of connecting (or of the request's first byte) is closed",
    )
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a request whose body has not all arrived within this many seconds of its "
        "headers gets 408",
    )
    tokenizer_threads: int = Field(default=1, ge=1, le=64)
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    served_model_name: str | None = Field(
        default=None, description="model name in responses (default: the manifest's model id)"
    )
    warmup: bool = True
    graceful_timeout_s: float = Field(default=30.0, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False
    torch_source_dir: Path | None = Field(
        default=None, description="sentence-transformers directory for runtime=torch"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("served_model_name", "torch_source_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.max_texts_per_request > self.max_queue:
            raise ValueError(
                f"EMBENCH_MAX_TEXTS_PER_REQUEST ({self.max_texts_per_request}) must not exceed "
                f"EMBENCH_MAX_QUEUE ({self.max_queue}): such a request could never be admitted"
            )
        return self

    def applied(self, name: str) -> Any:
        """A runtime-specific setting as the runtime applies it: None where the runtime has
        no such option (the setting is ignored) or where it is left at its unset default."""
        if self.runtime not in RUNTIME_SPECIFIC.get(name, (self.runtime,)):
            return None
        return getattr(self, name)

    def ignored(self) -> list[str]:
        """Settings given a non-default value that this runtime has no use for."""
        return [
            name
            for name in RUNTIME_SPECIFIC
            if self.runtime not in RUNTIME_SPECIFIC[name]
            and getattr(self, name) != type(self).model_fields[name].default
        ]

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerSettings:
        """Settings from EMBENCH_* variables; keyword overrides win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = cls.env_name(name)
            if key in environ:
                values[name] = environ[key]
        values.update(overrides)
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, values)) from None
        return settings


def _describe(exc: ValidationError, values: Mapping[str, object]) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc:
            name = ServerSettings.env_name(loc[0])
            if error["type"] == "missing":
                lines.append(f"{name} is required but not set")
            else:
                lines.append(f"{name}={values.get(loc[0])!r}: {error['msg']}")
        else:
            lines.append(error["msg"].removeprefix("Value error, "))
    return "invalid server settings: " + "; ".join(lines)
