"""From one scenario's raw measurement to its ScenarioResult (every statistic computed here)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np

from client.loadgen import Arrays, RawMeasurement
from client.result import (
    HistogramBucket,
    HistogramData,
    ResourceSample,
    ScenarioResult,
    ValidityFlag,
    WindowResult,
)
from client.scenario import (
    ClientOptions,
    ScenarioDefinition,
    StabilityParams,
    WarmupParams,
)
from client.stats import (
    HDR_HIGHEST_US,
    HDR_LOWEST_US,
    HDR_SIGNIFICANT_FIGURES,
    Summary,
    histogram,
    stability,
    windows,
)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _max(values: list[float]) -> float | None:
    return float(np.max(values)) if values else None


def summarize(
    raw: RawMeasurement,
    *,
    definition: ScenarioDefinition,
    comparability_key: str,
    warmup: WarmupParams,
    stability_params: StabilityParams,
    options: ClientOptions,
    wall_at_clock_zero: float,
    resource_source: str | None,
    metrics_delta: dict[str, float],
) -> ScenarioResult:
    """`wall_at_clock_zero`: Unix time of perf_counter 0 (turns clock readings into timestamps)."""
    p = raw.params
    a = Arrays.of(raw.recorder)
    t0, t1 = raw.t0, raw.t1
    duration = max(t1 - t0, 0.0)

    def ts(loop_t: float) -> datetime:
        return datetime.fromtimestamp(wall_at_clock_zero, UTC) + timedelta(seconds=loop_t)

    measured = (a.start >= t0) & (a.start < t1)
    ok_m = measured & a.ok
    failed_m = measured & ~a.ok
    n_sent = int(measured.sum()) + raw.cancelled
    n_ok, n_failed = int(ok_m.sum()), int(failed_m.sum())
    errors = dict(sorted(Counter(k for k, m in zip(a.kind, failed_m, strict=True) if m).items()))
    finished = n_ok + n_failed
    error_rate = n_failed / finished if finished else 0.0

    latency = (a.end[ok_m] - a.start[ok_m]) * 1e3
    lat = Summary.of(latency)
    is_open = p.mode == "open"
    service = Summary.of((a.end[ok_m] - a.sent[ok_m]) * 1e3) if is_open else None
    lag = Summary.of((a.sent[measured] - a.start[measured]) * 1e3) if is_open else None

    # throughput: successful completions inside the interval
    in_interval = a.ok & (a.end >= t0) & (a.end < t1)
    per_s = (lambda x: float(x) / duration) if duration > 0 else (lambda x: 0.0)
    server_tok = a.server_tokens[in_interval]
    server_tokens_per_s = (
        per_s(np.nansum(server_tok)) if server_tok.size and not np.isnan(server_tok).all() else None
    )

    # windows over completions inside the interval
    done = (a.end >= t0) & (a.end < t1)
    series = windows(
        a.end[done] - t0,
        (a.end[done] - a.start[done]) * 1e3,
        a.ok[done],
        duration,
        stability_params.window_s,
    )
    stab = stability(series, stability_params.windows, stability_params.tolerance)

    # server timing headers of measured successful requests
    timing_stats: dict[str, float | None] = {}
    timing_cols = {name: i for i, name in enumerate(raw.recorder.timing_names)}
    t_rows = a.timings[ok_m] if a.timings.size else a.timings
    with_timing = int((~np.isnan(t_rows)).any(axis=1).sum()) if t_rows.size else 0
    for name in ("tokenization", "queue", "inference", "total"):
        col = timing_cols.get(name)
        s = Summary.of(t_rows[:, col]) if col is not None and t_rows.size else Summary.of([])
        timing_stats[f"server_{name}_mean_ms"] = s.mean
        timing_stats[f"server_{name}_p50_ms"] = s.p50
        timing_stats[f"server_{name}_p99_ms"] = s.p99

    # resources
    samples = [
        ResourceSample(
            t_s=round(t, 3), server_cpu_pct=c, server_rss_bytes=r, client_cpu_pct=cc, inflight=i
        )
        for t, c, r, cc, i in raw.samples
    ]
    server_cpu = [s.server_cpu_pct for s in samples if s.server_cpu_pct is not None]
    server_rss = [float(s.server_rss_bytes) for s in samples if s.server_rss_bytes is not None]
    client_cpu = [s.client_cpu_pct for s in samples if s.client_cpu_pct is not None]
    inflight = [float(s.inflight) for s in samples]
    saturated = bool(client_cpu) and max(client_cpu) >= options.client_saturation_pct

    # validity
    flags: list[ValidityFlag] = []

    def flag(code: str, severity: str, message: str) -> None:
        flags.append(ValidityFlag(code=code, severity=severity, message=message))  # type: ignore[arg-type]

    if raw.interrupted:
        flag("interrupted", "invalid", "interrupted before the scenario's end; figures partial")
    if finished and n_ok == 0:
        flag("no_success", "invalid", f"none of {finished} requests succeeded")
    elif not finished:
        flag("no_success", "invalid", "no request finished in the measurement interval")
    if error_rate > options.error_threshold:
        shown = ", ".join(f"{k}: {v}" for k, v in errors.items())
        flag(
            "error_rate",
            "invalid",
            f"{error_rate:.2%} of requests failed (threshold {options.error_threshold:.2%}; "
            f"{shown})",
        )
    if not raw.interrupted and raw.stop_reason == "max_duration" and finished < p.min_requests:
        flag(
            "min_requests_not_met",
            "invalid",
            f"{finished} requests in max_duration_s={p.max_duration_s:g}, "
            f"min_requests={p.min_requests}",
        )
    if not stab.stable:
        flag("unstable", "warning", stab.reason)
    if saturated:
        flag(
            "client_saturated",
            "warning",
            f"client CPU reached {max(client_cpu):.0f}% of a core "
            f"(threshold {options.client_saturation_pct:g}%); the client may limit the load",
        )
    if lag is not None and lag.p99 is not None and lag.p99 > options.max_schedule_lag_ms:
        flag(
            "schedule_lag",
            "warning",
            f"p99 schedule lag {lag.p99:.1f} ms > {options.max_schedule_lag_ms:g} ms; "
            f"send rate {per_s(n_sent):.1f}/s for a target of {p.rate:g}/s",
        )
    if raw.warmup_incomplete:
        flag(
            "warmup_incomplete",
            "warning",
            f"warm-up ended by the {p.max_duration_s:g} s bound with {raw.warmup_requests} "
            f"of {warmup.requests} requests",
        )
    if resource_source and raw.sampler_failures:
        flag(
            "resource_sampling",
            "warning",
            f"{raw.sampler_failures} server resource sample(s) failed: {raw.sampler_error}",
        )

    hist = None
    if latency.size:
        h = histogram(latency)
        hist = HistogramData(
            lowest_us=HDR_LOWEST_US,
            highest_us=HDR_HIGHEST_US,
            significant_figures=HDR_SIGNIFICANT_FIGURES,
            hdr_encoded=h.hdr_encoded,
            buckets=[HistogramBucket(lower_ms=lo, upper_ms=hi, count=c) for lo, hi, c in h.buckets],
        )

    measure_started = ts(t0) if t0 < float("inf") else None
    return ScenarioResult(
        name=p.name,
        status="incomplete" if raw.interrupted else "complete",
        params=p,
        definition=definition,
        definition_key=definition.key(),
        comparability_key=comparability_key,
        warmup=warmup,
        stability_params=stability_params,
        started_at=ts(raw.t_begin),
        measure_started_at=measure_started,
        finished_at=ts(raw.t_drained),
        warmup_requests=raw.warmup_requests,
        warmup_duration_s=max(t0 - raw.t_begin, 0.0),
        duration_s=duration,
        drain_s=max(raw.t_drained - t1, 0.0),
        stop_reason=raw.stop_reason,  # type: ignore[arg-type]
        trials=raw.trials,
        valid=not any(f.severity == "invalid" for f in flags),
        stable=stab.stable,
        stability_reason=stab.reason,
        qps_spread=stab.qps_spread,
        p99_spread=stab.p99_spread,
        flags=flags,
        requests_sent=n_sent,
        requests_ok=n_ok,
        requests_failed=n_failed,
        requests_cancelled=raw.cancelled,
        error_rate=error_rate,
        errors=errors,
        error_samples={k: v for k, v in raw.recorder.error_samples.items() if k in errors},
        qps=per_s(in_interval.sum()),
        texts_per_s=per_s(a.n_texts[in_interval].sum()),
        tokens_per_s=per_s(a.n_tokens[in_interval].sum()),
        server_tokens_per_s=server_tokens_per_s,
        target_rate=p.rate if is_open else None,
        send_rate=per_s(n_sent),
        latency_count=lat.count,
        min_ms=lat.min,
        max_ms=lat.max,
        mean_ms=lat.mean,
        stddev_ms=lat.stddev,
        p50_ms=lat.p50,
        p90_ms=lat.p90,
        p95_ms=lat.p95,
        p99_ms=lat.p99,
        p999_ms=lat.p999,
        service_p50_ms=service.p50 if service else None,
        service_p99_ms=service.p99 if service else None,
        service_max_ms=service.max if service else None,
        lag_mean_ms=lag.mean if lag else None,
        lag_p50_ms=lag.p50 if lag else None,
        lag_p99_ms=lag.p99 if lag else None,
        lag_max_ms=lag.max if lag else None,
        server_timing_responses=with_timing,
        **timing_stats,
        inflight_max=raw.inflight_max,
        inflight_mean=_mean(inflight),
        resource_source=resource_source,  # type: ignore[arg-type]
        server_cpu_pct_mean=_mean(server_cpu),
        server_cpu_pct_max=_max(server_cpu),
        server_rss_bytes_mean=_mean(server_rss),
        server_rss_bytes_max=int(max(server_rss)) if server_rss else None,
        client_cpu_pct_mean=_mean(client_cpu),
        client_cpu_pct_max=_max(client_cpu),
        client_saturated=saturated,
        windows=[WindowResult(**w.__dict__) for w in series],
        histogram=hist,
        resource_samples=samples,
        server_metrics_delta=metrics_delta,
    )
