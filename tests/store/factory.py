"""Valid RunResult documents for store tests, built from the pydantic models directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from client.result import (
    ClientInfo,
    EnvironmentFingerprint,
    HostProbe,
    ProbeScores,
    RunMetadata,
    RunResult,
    ScenarioResult,
    WindowResult,
    comparability_key,
    stable_hash,
)
from client.scenario import (
    ClientOptions,
    ScenarioDefinition,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)

T0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
MODEL = "all-minilm-l6-v2"


def environment(libraries: dict[str, str] | None = None) -> EnvironmentFingerprint:
    return EnvironmentFingerprint(
        hostname="bench-1",
        os="Linux",
        os_release="6.1",
        kernel="6.1.0",
        arch="x86_64",
        python="3.11.9",
        cpu_model="Test CPU",
        cpu_flags=["avx2"],
        cpu_count_logical=2,
        cpu_count_physical=1,
        cpu_affinity=2,
        memory_total_bytes=8 * 2**30,
        libraries=libraries if libraries is not None else {"httpx": "0.28.1"},
        hardware_key="hw-" + "0" * 61,
    )


def scenario(
    name: str,
    *,
    model: str,
    variant: str,
    runtime: str,
    started: datetime,
    qps: float,
    p99_ms: float,
    server_config_key: str,
    valid: bool = True,
    stable: bool = True,
    qps_ci: float | None = None,
    p99_ci: float | None = None,
) -> ScenarioResult:
    """`qps_ci`, `p99_ci`: relative half-widths of the within-run 95% intervals."""
    intervals: dict[str, Any] = {}
    if qps_ci is not None:
        intervals.update(qps_ci_low=qps * (1 - qps_ci), qps_ci_high=qps * (1 + qps_ci))
    if p99_ci is not None:
        intervals.update(p99_ci_low_ms=p99_ms * (1 - p99_ci), p99_ci_high_ms=p99_ms * (1 + p99_ci))
    concurrency = 1 if name.endswith("c1") else 4
    params = ScenarioParams(name=name, mode="closed", concurrency=concurrency)
    definition = ScenarioDefinition(
        mode="closed",
        concurrency=concurrency,
        rate=None,
        arrival=None,
        texts_per_request=1,
        length_bucket="short",
        target_tokens=32,
        endpoint="embed",
        text_mode="unique",
        repeat_pool=None,
        corpus_sha256="c" * 64,
        token_counter="bert",
    )
    key = definition.key()
    return ScenarioResult(
        name=name,
        status="complete",
        params=params,
        definition=definition,
        definition_key=key,
        comparability_key=comparability_key(
            model, variant, runtime, key, server_config_key, "hw-" + "0" * 61
        ),
        warmup=WarmupParams(),
        stability_params=StabilityParams(),
        started_at=started,
        measure_started_at=started + timedelta(seconds=5),
        finished_at=started + timedelta(seconds=20),
        warmup_requests=50,
        warmup_duration_s=5.0,
        duration_s=15.0,
        drain_s=0.01,
        stop_reason="min_reached",
        trials=1,
        valid=valid,
        stable=stable,
        stability_reason="within tolerance" if stable else "windows disagree",
        qps_spread=0.02,
        p99_spread=0.03,
        flags=[],
        requests_sent=1000,
        requests_ok=1000,
        requests_failed=0,
        requests_cancelled=0,
        error_rate=0.0,
        errors={},
        error_samples={},
        qps=qps,
        texts_per_s=qps,
        tokens_per_s=qps * 32,
        server_tokens_per_s=None,
        target_rate=None,
        send_rate=qps,
        latency_count=1000,
        min_ms=1.0,
        max_ms=p99_ms * 1.5,
        mean_ms=p99_ms / 3,
        stddev_ms=1.0,
        p50_ms=p99_ms / 4,
        p90_ms=p99_ms / 2,
        p95_ms=p99_ms * 0.8,
        p99_ms=p99_ms,
        p999_ms=p99_ms * 1.2,
        service_p50_ms=None,
        service_p99_ms=None,
        service_max_ms=None,
        lag_mean_ms=None,
        lag_p50_ms=None,
        lag_p99_ms=None,
        lag_max_ms=None,
        server_timing_responses=1000,
        server_tokenization_mean_ms=0.1,
        server_tokenization_p50_ms=0.1,
        server_tokenization_p99_ms=0.2,
        server_queue_mean_ms=0.5,
        server_queue_p50_ms=0.4,
        server_queue_p99_ms=1.0,
        server_inference_mean_ms=3.0,
        server_inference_p50_ms=3.0,
        server_inference_p99_ms=5.0,
        server_total_mean_ms=4.0,
        server_total_p50_ms=4.0,
        server_total_p99_ms=6.0,
        inflight_max=4,
        inflight_mean=3.9,
        resource_source="psutil",
        server_cpu_pct_mean=150.0,
        server_cpu_pct_max=190.0,
        server_rss_bytes_mean=3.0e8,
        server_rss_bytes_max=5_000_000_000,  # > 2**31: needs a 64-bit column
        client_cpu_pct_mean=20.0,
        client_cpu_pct_max=30.0,
        client_saturated=False,
        windows=[
            WindowResult(
                index=0,
                start_s=0.0,
                end_s=2.0,
                requests_ok=100,
                errors=0,
                qps=qps,
                p50_ms=p99_ms / 4,
                p99_ms=p99_ms,
                partial=False,
            )
        ],
        histogram=None,
        resource_samples=[],
        server_metrics_delta={"embed_requests_total": 1050.0},
        **intervals,  # ignored by a result schema without within-run intervals
    )


def host_probe(speed: float, at: datetime) -> HostProbe:
    """A host probe whose three scores are `speed` times the usual ones."""
    scores = ProbeScores(
        at=at,
        compute_gflops=100.0 * speed,
        memory_gb_per_s=20.0 * speed,
        single_thread_score=5e6 * speed,
        seconds=3.0,
    )
    return HostProbe(cpuset="0-1", before=scores, after=scores, drift=0.0)


def run_result(
    night: int = 0,
    *,
    run_id: str | None = None,
    model: str = MODEL,
    variant: str = "fp32",
    runtime: str = "onnxruntime",
    qps: float = 100.0,
    p99_ms: float = 20.0,
    scenarios: tuple[str, ...] = ("closed-c4", "closed-c1"),
    labels: dict[str, str] | None = None,
    libraries: dict[str, str] | None = None,
    model_load_ms: float = 800.0,
    valid: bool = True,
    stable: bool = True,
    runtime_version: str = "1.20.0",
    server_libraries: dict[str, str] | None = None,
    manifest: str | None = None,
    repetition: int | None = None,
    probe_speed: float | None = None,
    qps_ci: float | None = None,
    p99_ci: float | None = None,
) -> RunResult:
    """One night's result. `repetition` makes it repetition N of the night's DAG run (its
    labels name the DAG run; it starts N * 30 minutes into the night)."""
    started = T0 + timedelta(days=night, minutes=30 * (repetition or 0))
    if repetition is not None:
        labels = {
            "dag_id": "embedding_benchmark",
            "run_id": f"scheduled__night-{night}",
            "map_index": str(repetition),
            **(labels or {}),
        }
        run_id = run_id or f"{variant}-{runtime}-night-{night}-rep-{repetition}"
    server_config: dict[str, Any] = {"threads": 2, "max_batch_size": 32}
    server_config_key = stable_hash(server_config)
    env = environment(libraries)
    return RunResult(
        run_id=run_id or f"{variant}-{runtime}-night-{night}",
        status="complete",
        status_reason=None,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        valid=valid,
        metadata=RunMetadata(
            url="http://127.0.0.1:8000",
            endpoint="/embed",
            model=model,
            variant=variant,
            runtime=runtime,
            runtime_version=runtime_version,
            server_version="0.1.0",
            manifest_sha256=manifest or ("m" + variant).ljust(64, "0"),
            model_load_ms=model_load_ms,
            threads=2,
            server_config=server_config,
            server_config_key=server_config_key,
            server_library_versions=(
                server_libraries
                if server_libraries is not None
                else {"onnxruntime": runtime_version, "tokenizers": "0.22.2"}
            ),
            image=None,
            image_digest=None,
            container_id=None,
            git_sha="abc123",
            labels=labels or {},
            server_info={"parity": {"mean_cosine": 0.9999}},
        ),
        client=ClientInfo(
            version="0.1.0",
            python="3.11.9",
            argv=["client"],
            options=ClientOptions(),
            corpus_sha256="c" * 64,
            token_counter="bert",
            event_loop="asyncio",
        ),
        environment=env,
        warmup=WarmupParams(),
        stability=StabilityParams(),
        scenarios=[
            scenario(
                name,
                model=model,
                variant=variant,
                runtime=runtime,
                started=started + timedelta(minutes=i),
                qps=qps,
                p99_ms=p99_ms,
                server_config_key=server_config_key,
                valid=valid,
                stable=stable,
                qps_ci=qps_ci,
                p99_ci=p99_ci,
            )
            for i, name in enumerate(scenarios)
        ],
        host_probe=host_probe(probe_speed, started) if probe_speed is not None else None,
    )
