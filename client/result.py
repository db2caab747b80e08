"""The result schema: the one contract between the client, the results store and reports.

A RunResult document holds run metadata, the environment fingerprint and one ScenarioResult
per scenario. Every statistic of a scenario is a plain scalar field (`qps`, `p99_ms`,
`server_cpu_pct_mean`, ...) so a store can map it to a column; the window series, the
histogram and the resource samples are lists kept as JSON. Units are in the field names
(_ms, _s, _bytes, _pct, _per_s); a statistic that does not apply or could not be measured is
null, never 0.

Comparability: `ScenarioResult.definition` holds what decides that two results measured the
same thing, hashed into `definition_key`; `comparability_key` adds model, variant, runtime,
the server configuration and the hardware fingerprint (the store's history key).

Versioning: `schema_version` is MAJOR.MINOR. A reader accepts any document of its major
version; minor versions only add optional fields. Old readers ignore unknown fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from client.scenario import (
    ClientOptions,
    ScenarioDefinition,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = SCHEMA_VERSION.split(".")[0]

Severity = Literal["invalid", "warning"]
StopReason = Literal["min_reached", "stable", "max_trials", "max_duration", "interrupted"]

# Codes of validity flags (severity in brackets).
FLAG_CODES: dict[str, str] = {
    "error_rate": "more failed requests than the error threshold [invalid]",
    "no_success": "no request succeeded [invalid]",
    "min_requests_not_met": "max_duration_s ended the scenario before min_requests [invalid]",
    "interrupted": "the scenario was interrupted; its figures are partial [invalid]",
    "unstable": "the last windows did not agree within the tolerance [warning]",
    "client_saturated": "the client's own CPU reached the saturation threshold [warning]",
    "schedule_lag": "open loop: the client fell behind its send schedule [warning]",
    "warmup_incomplete": "warm-up ended by the time bound, not by its targets [warning]",
    "resource_sampling": "server resources could not be sampled [warning]",
}


class Document(BaseModel):
    # Readers of the same major version ignore fields added by a later minor version.
    model_config = ConfigDict(extra="ignore")


class ValidityFlag(Document):
    code: str
    severity: Severity
    message: str


class WindowResult(Document):
    index: int
    start_s: float
    end_s: float
    requests_ok: int
    errors: int
    qps: float
    p50_ms: float | None
    p99_ms: float | None
    partial: bool


class HistogramBucket(Document):
    lower_ms: float
    upper_ms: float
    count: int


class HistogramData(Document):
    """Successful-request latencies. `hdr_encoded` is an HdrHistogram (V2 compressed,
    base64, microseconds) that `hdrh.histogram.HdrHistogram.decode` restores and merges;
    `buckets` are the same data in log-spaced buckets (20 per decade), non-empty ones only."""

    unit: Literal["us"] = "us"
    lowest_us: int
    highest_us: int
    significant_figures: int
    hdr_encoded: str
    buckets: list[HistogramBucket]


class ResourceSample(Document):
    t_s: float  # from the start of the measurement
    server_cpu_pct: float | None  # percent of one core (200 = two cores busy)
    server_rss_bytes: int | None
    client_cpu_pct: float | None  # percent of one core
    inflight: int


class ScenarioResult(Document):
    name: str
    status: Literal["complete", "incomplete"]
    params: ScenarioParams
    definition: ScenarioDefinition
    definition_key: str
    comparability_key: str
    warmup: WarmupParams
    stability_params: StabilityParams

    started_at: datetime  # warm-up start
    measure_started_at: datetime | None
    finished_at: datetime
    warmup_requests: int
    warmup_duration_s: float
    duration_s: float  # the measurement interval
    drain_s: float  # waiting for requests in flight after the interval
    stop_reason: StopReason
    trials: int

    # validity
    valid: bool
    stable: bool
    stability_reason: str
    qps_spread: float | None
    p99_spread: float | None
    flags: list[ValidityFlag]

    # request accounting: requests whose (scheduled) start fell in the measurement interval
    requests_sent: int
    requests_ok: int
    requests_failed: int
    requests_cancelled: int  # in flight when interrupted; in no other count
    error_rate: float
    errors: dict[str, int]  # kind -> count: http_<status>, timeout, connection, bad_body, other
    error_samples: dict[str, str]  # kind -> first message

    # throughput: successful completions inside the measurement interval / duration_s
    qps: float
    texts_per_s: float
    tokens_per_s: float  # client-side token counts (see definition.token_counter)
    server_tokens_per_s: float | None  # from the server's usage.prompt_tokens
    target_rate: float | None  # open loop: the configured arrival rate
    send_rate: float  # requests started per second of the interval (open loop: offered load)

    # latency of successful requests, ms (open loop: from the scheduled send time)
    latency_count: int
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    stddev_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    p999_ms: float | None

    # open loop: service time (from the actual send) and schedule lag (actual - scheduled)
    service_p50_ms: float | None
    service_p99_ms: float | None
    service_max_ms: float | None
    lag_mean_ms: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None

    # the server's timing headers (successful responses that carried them), ms
    server_timing_responses: int
    server_tokenization_mean_ms: float | None
    server_tokenization_p50_ms: float | None
    server_tokenization_p99_ms: float | None
    server_queue_mean_ms: float | None
    server_queue_p50_ms: float | None
    server_queue_p99_ms: float | None
    server_inference_mean_ms: float | None
    server_inference_p50_ms: float | None
    server_inference_p99_ms: float | None
    server_total_mean_ms: float | None
    server_total_p50_ms: float | None
    server_total_p99_ms: float | None

    # requests in flight (sampled every resource sample; max is exact)
    inflight_max: int
    inflight_mean: float | None

    # resources during the measurement
    resource_source: Literal["docker", "psutil"] | None
    server_cpu_pct_mean: float | None
    server_cpu_pct_max: float | None
    server_rss_bytes_mean: float | None
    server_rss_bytes_max: int | None
    client_cpu_pct_mean: float | None
    client_cpu_pct_max: float | None
    client_saturated: bool

    windows: list[WindowResult]
    histogram: HistogramData | None
    resource_samples: list[ResourceSample]
    # /metrics after minus before the scenario (warm-up included), numeric samples only
    server_metrics_delta: dict[str, float] = Field(default_factory=dict)


class EnvironmentFingerprint(Document):
    """Where the client ran. `hardware_key` hashes what makes numbers comparable (CPU model,
    flags, core count, memory, OS, architecture); library versions are kept apart."""

    hostname: str
    os: str
    os_release: str
    kernel: str
    arch: str
    python: str
    cpu_model: str
    cpu_flags: list[str]
    cpu_count_logical: int
    cpu_count_physical: int | None
    cpu_affinity: int | None
    memory_total_bytes: int
    libraries: dict[str, str]
    hardware_key: str


class RunMetadata(Document):
    """What was measured. From the caller's labels, else the server's /info."""

    url: str
    endpoint: str
    model: str | None
    variant: str | None
    runtime: str | None
    runtime_version: str | None
    server_version: str | None
    manifest_sha256: str | None
    model_load_ms: float | None
    threads: int | None
    server_config: dict[str, Any]  # threads, spinning, batching settings
    server_config_key: str  # sha256 of server_config
    server_library_versions: dict[str, str]
    image: str | None
    image_digest: str | None
    container_id: str | None
    git_sha: str | None
    labels: dict[str, str]
    server_info: dict[str, Any]  # /info as answered, before the first scenario


class ClientInfo(Document):
    version: str
    python: str
    argv: list[str]
    options: ClientOptions
    corpus_sha256: str
    token_counter: str
    event_loop: str


class RunResult(Document):
    schema_version: str = SCHEMA_VERSION
    kind: Literal["embench.client.result"] = "embench.client.result"
    run_id: str
    status: Literal["complete", "incomplete", "failed"]
    status_reason: str | None
    started_at: datetime
    finished_at: datetime | None
    valid: bool
    metadata: RunMetadata
    client: ClientInfo
    environment: EnvironmentFingerprint
    warmup: WarmupParams
    stability: StabilityParams
    scenarios: list[ScenarioResult]
    notes: list[str] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, value: str) -> str:
        if value.split(".")[0] != SCHEMA_MAJOR:
            raise ValueError(
                f"result schema version {value} is not readable by this client "
                f"(schema {SCHEMA_VERSION}); only major version {SCHEMA_MAJOR} is"
            )
        return value


def stable_hash(doc: Any) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def comparability_key(
    model: str | None,
    variant: str | None,
    runtime: str | None,
    definition_key: str,
    server_config_key: str,
    hardware_key: str,
) -> str:
    """The history key: results with equal keys form one history."""
    return stable_hash(
        {
            "model": model,
            "variant": variant,
            "runtime": runtime,
            "scenario": definition_key,
            "server_config": server_config_key,
            "hardware": hardware_key,
        }
    )


def write_atomic(path: Path, result: RunResult) -> None:
    """Write the document so that a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = result.model_dump_json(indent=2).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # readable by whoever ingests it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_result(path: Path | str) -> RunResult:
    return RunResult.model_validate_json(Path(path).read_bytes())


def json_schema() -> dict[str, Any]:
    return RunResult.model_json_schema()
