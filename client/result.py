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
from collections.abc import Mapping
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

SCHEMA_VERSION = "2.0"
SCHEMA_MAJOR = SCHEMA_VERSION.split(".")[0]

Severity = Literal["invalid", "warning"]
StopReason = Literal[
    "min_reached", "stable", "max_trials", "max_duration", "slo_missed", "interrupted"
]

# Codes of validity flags (severity in brackets).
FLAG_CODES: dict[str, str] = {
    "error_rate": "more failed requests than the error threshold [invalid]",
    "no_success": "no request succeeded [invalid]",
    "min_requests_not_met": "max_duration_s ended the scenario before min_requests [invalid]",
    "interrupted": "the scenario was interrupted; its figures are partial [invalid]",
    "unstable": "the measurement never stabilised within max_trials checks [invalid]",
    "client_saturated": "the client's own CPU, or its event loop's lag, reached the saturation "
    "threshold [warning]",
    "schedule_lag": "open loop: the client fell behind its send schedule: p99 lag above "
    "max_schedule_lag_ms [warning]; above schedule_lag_limit_ms, or arrivals never sent "
    "[invalid]",
    "slo_missed": "stopped early: more requests exceeded the SLO than p99 allows of all the "
    "arrivals the measurement could hold (stop_when_slo_missed) [invalid]",
    "warmup_incomplete": "warm-up ended by the time bound, not by its targets [warning]",
    "resource_sampling": "server resources could not be sampled [warning]",
    "search_above_high": "search: even search.high met the SLO; the peak is above it [invalid]",
    "search_none_passed": "search: no probe met the SLO, not even search.low [invalid]",
    "search_imprecise": "search: max_probes ended it before the stated precision [warning]",
}


class Document(BaseModel):
    # Readers of the same major version ignore fields added by a later minor version.
    model_config = ConfigDict(extra="ignore")


class ValidityFlag(Document):
    code: str
    severity: Severity
    message: str


class WindowResult(Document):
    """One stability window (completions by completion time; latency over every completion,
    failures at their time to failure)."""

    index: int
    start_s: float  # from the start of the measurement
    end_s: float
    requests_ok: int
    errors: int
    qps: float
    p50_ms: float | None
    p99_ms: float | None
    partial: bool
    requests: int = 0  # completions, failures included
    arrivals: int | None = None  # open loop: arrivals scheduled in the window
    throughput: float | None = None  # compared: qps, or (open loop) completions per arrival
    p50_low_ms: float | None = None  # the ranges sampling alone gives p50 and p99
    p50_high_ms: float | None = None
    p99_low_ms: float | None = None
    p99_high_ms: float | None = None
    inflight: float = 0.0  # mean requests in flight (summed latency / length)
    stable: bool = False  # one of the stable windows the figures cover


class HistogramBucket(Document):
    lower_ms: float
    upper_ms: float
    count: int


class HistogramData(Document):
    """Latencies of every measured request (failures at their time to failure).
    `hdr_encoded` is an HdrHistogram (V2 compressed, base64, microseconds) that
    `hdrh.histogram.HdrHistogram.decode` restores and merges; `buckets` are the same data in
    log-spaced buckets (20 per decade), non-empty ones only."""

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


class SearchProbe(Document):
    """One probe of a search scenario: a full measurement at one load."""

    index: int  # 1-based, in the order run
    name: str  # the probe's own scenario name (its seeds derive from it)
    load: float  # the rate (per s) or concurrency probed
    qps: float
    p99_ms: float | None
    error_rate: float
    valid: bool
    stable: bool
    passed: bool
    reason: str  # why it passed or failed
    duration_s: float  # its measurement interval
    elapsed_s: float  # warm-up, measurement and drain: what the probe cost


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
    # the interval the figures cover: from figures_from_s (the first stable window) to the
    # end of the measurement, which began figures_from_s earlier
    duration_s: float
    drain_s: float  # waiting for requests in flight after the interval
    stop_reason: StopReason
    trials: int  # stability checks made

    # validity
    valid: bool
    stable: bool
    stability_reason: str
    qps_spread: float | None  # max/min - 1 over the checked windows (open loop: per arrival)
    p99_spread: float | None  # max/min - 1 over the checked windows
    flags: list[ValidityFlag]

    # request accounting: requests whose (scheduled) start fell in the figures' interval
    requests_sent: int
    requests_ok: int
    requests_failed: int
    requests_cancelled: int  # in flight when interrupted; in no other count
    error_rate: float
    errors: dict[str, int]  # kind -> count: http_<status>, timeout, connection, bad_body, other
    error_samples: dict[str, str]  # kind -> first message

    # throughput: successful completions inside the figures' interval / duration_s
    qps: float
    texts_per_s: float
    tokens_per_s: float  # the server's token counts when it reports them, else the client's
    server_tokens_per_s: float | None  # from the server's usage.prompt_tokens
    target_rate: float | None  # open loop: the configured arrival rate
    send_rate: float  # requests started per second of the interval (open loop: offered load)

    # latency of every measured request, ms (open loop: from the scheduled send time): a
    # failure counts at its time to failure, a timeout at the timeout. A percentile that the
    # count cannot bound (see percentile_notes) is null.
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

    # stability windows: their length, how many the figures cover (0: never stable, the
    # figures then cover the whole measurement), where the figures begin in the measurement
    window_s: float | None = None
    stable_windows: int = 0
    figures_from_s: float = 0.0

    # latency of successful requests only, ms
    success_count: int = 0
    success_p50_ms: float | None = None
    success_p90_ms: float | None = None
    success_p95_ms: float | None = None
    success_p99_ms: float | None = None
    success_p999_ms: float | None = None

    # distribution-free intervals at `confidence` (order statistics: ranks from the binomial)
    confidence: float = 0.95
    p50_ci_low_ms: float | None = None
    p50_ci_high_ms: float | None = None
    p90_ci_low_ms: float | None = None
    p90_ci_high_ms: float | None = None
    p95_ci_low_ms: float | None = None
    p95_ci_high_ms: float | None = None
    p99_ci_low_ms: float | None = None
    p99_ci_high_ms: float | None = None
    p999_ci_low_ms: float | None = None
    p999_ci_high_ms: float | None = None
    # why a percentile is null, e.g. {"p999": "needs at least 3688 requests for a 95%
    # interval; 512 measured"}
    percentile_notes: dict[str, str] = Field(default_factory=dict)
    # throughput across the stable windows (batch means, Student t)
    qps_ci_low: float | None = None
    qps_ci_high: float | None = None

    # open loop: arrivals due in the figures' interval, and those of them never sent
    requests_scheduled: int | None = None
    requests_dropped: int | None = None
    # the client's own event loop: how late a fixed sleep woke (both modes)
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None

    # SLO (params.slo_p99_ms): requests that succeeded within it, per second; met when p99
    # <= the SLO and the error rate < 1%
    slo_p99_ms: float | None = None
    goodput_per_s: float | None = None
    slo_met: bool | None = None
    client_tokens_per_s: float | None = None  # from the client's own token counts

    # search scenarios (params.search): the figures above are those of the highest probe
    # that met the SLO (of the lowest probe, flagged search_none_passed, when none did);
    # started_at/finished_at span the whole search
    search_over: Literal["rate", "concurrency"] | None = None
    peak_load: float | None = None  # the highest rate or concurrency that met the SLO
    peak_qps: float | None = None  # QPS measured at peak_load
    search_probes: list[SearchProbe] = Field(default_factory=list)
    search_reason: str | None = None


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


class ProbeScores(Document):
    """One run of the host probe (`python -m server.probe`) on the server's cores: each score
    the best of a few timed samples of fixed work; higher is faster."""

    at: datetime  # when the probe started
    compute_gflops: float = Field(gt=0)  # float32 matrix products on every usable core
    memory_gb_per_s: float = Field(gt=0)  # a large array copy, bytes read + written
    single_thread_score: float = Field(gt=0)  # iterations/s of a fixed pure-Python loop
    seconds: float  # the probe's wall time
    cpus: int | None = None  # the cores it used (affinity capped by a CPU quota)


class HostProbe(Document):
    """The host probe before and after the scenarios. `drift` is the largest
    |after / before - 1| of the three scores (None unless both ran)."""

    cpuset: str | None  # the server's cpuset the probe ran on (None: unpinned)
    before: ProbeScores | None
    after: ProbeScores | None
    drift: float | None


PROBE_SCORES = ("compute_gflops", "memory_gb_per_s", "single_thread_score")


def probe_drift(before: ProbeScores | None, after: ProbeScores | None) -> float | None:
    """The largest |after / before - 1| across the three scores; None without both."""
    if before is None or after is None:
        return None
    return max(abs(getattr(after, s) / getattr(before, s) - 1) for s in PROBE_SCORES)


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
    # the host probe around the scenarios (the benchmark pipeline adds it; None: not run)
    host_probe: HostProbe | None = None

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


INSTANCE_TYPE_LABEL = "instance_type"  # the cloud's instance type, when the caller knows it


def history_hardware_key(hardware_key: str, labels: Mapping[str, str]) -> str:
    """The hardware part of the history key: the fingerprint's, and the instance type when a
    label names it (two types can share a CPU model, core count and memory, yet differ in
    what the cloud gives them). Without the label the key is the fingerprint's, as before."""
    instance_type = labels.get(INSTANCE_TYPE_LABEL)
    if not instance_type:
        return hardware_key
    return stable_hash({"hardware": hardware_key, "instance_type": instance_type})


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
