"""From one scenario's raw measurement to its ScenarioResult (every statistic computed here).

The figures are those of the stable windows: the measurement's windows are judged again here
(client.stats.stability, the same rule and data as the engine's last check) and the figures'
interval starts at the first window of the stable run - latency over the requests whose
(scheduled) start falls in [that window's start, t1), throughput over the completions in it.
A measurement that never stabilised keeps its whole interval and is flagged invalid.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np

from client.loadgen import Arrays, RawMeasurement, measure_windows
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
    CONFIDENCE,
    HDR_HIGHEST_US,
    HDR_LOWEST_US,
    HDR_SIGNIFICANT_FIGURES,
    Summary,
    histogram,
    mean_interval,
    nearest_rank,
    percentiles_with_intervals,
    stability,
    tail_design_effect,
    window_length,
    with_window_spread,
)

# SLO met: p99 within it and fewer errors than this (the search's default bound as well)
SLO_MAX_ERROR_RATE = 0.01


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
    sp = stability_params
    a = Arrays.of(raw.recorder)
    t0, t1 = raw.t0, raw.t1
    measured_s = max(t1 - t0, 0.0)
    is_open = p.mode == "open"

    def ts(loop_t: float) -> datetime:
        return datetime.fromtimestamp(wall_at_clock_zero, UTC) + timedelta(seconds=loop_t)

    # stability: the engine's windows, judged again on the final data
    window_s, window_note = raw.window_s, raw.window_note
    if window_s is None:  # never sized (stopped before the minimums): size them now
        done = int(((a.end >= t0) & (a.end < t1)).sum())
        window_s, window_note = window_length(
            sp.window_s,
            sp.window_requests,
            done / measured_s if measured_s > 0 else None,
            sp.windows,
            p.max_duration_s,
        )
    series = (
        measure_windows(a, t0, t1, window_s, raw.schedule) if measured_s > 0 and t0 < t1 else []
    )
    stab = stability(series, sp.windows, sp.tolerance)
    first = stab.first if stab.stable and stab.first is not None else 0
    figures_from = series[first].start_s if stab.stable and series else 0.0
    tf = t0 + figures_from
    duration = max(t1 - tf, 0.0)
    stable_ids = {w.index for w in series[first:] if not w.partial} if stab.stable else set()

    measured = (a.start >= tf) & (a.start < t1)
    ok_m = measured & a.ok
    failed_m = measured & ~a.ok
    n_sent = int(measured.sum()) + raw.cancelled
    n_ok, n_failed = int(ok_m.sum()), int(failed_m.sum())
    errors = dict(sorted(Counter(k for k, m in zip(a.kind, failed_m, strict=True) if m).items()))
    finished = n_ok + n_failed
    error_rate = n_failed / finished if finished else 0.0

    # latency of every measured request: failures at their time to failure
    latency_all = (a.end[measured] - a.start[measured]) * 1e3
    latency_ok = (a.end[ok_m] - a.start[ok_m]) * 1e3
    lat = Summary.of(latency_all)
    # requests that share one fate (a batch, a queue) tell less than independent ones
    design = tail_design_effect(a.start[measured], latency_all)
    pct = percentiles_with_intervals(latency_all, CONFIDENCE, design)
    pct_ok = percentiles_with_intervals(latency_ok, CONFIDENCE, design)
    notes = {k: v.note for k, v in pct.items() if v.note}
    notes.update({f"success_{k}": v.note for k, v in pct_ok.items() if v.note and not pct[k].note})
    service = Summary.of((a.end[ok_m] - a.sent[ok_m]) * 1e3) if is_open else None
    lag = Summary.of((a.sent[measured] - a.start[measured]) * 1e3) if is_open else None

    # throughput: successful completions inside the figures' interval
    in_interval = a.ok & (a.end >= tf) & (a.end < t1)
    per_s = (lambda x: float(x) / duration) if duration > 0 else (lambda x: 0.0)
    server_tok = a.server_tokens[in_interval]
    server_tokens_per_s = (
        per_s(np.nansum(server_tok)) if server_tok.size and not np.isnan(server_tok).all() else None
    )
    client_tokens_per_s = per_s(a.n_tokens[in_interval].sum())
    every_count = server_tok.size > 0 and not np.isnan(server_tok).any()
    # the server's own counts when every answer carried them (no mix of two tokenizers)
    tokens_per_s = server_tokens_per_s if every_count and server_tokens_per_s else None
    checked = [w for w in series if w.index in stable_ids] or [w for w in series if not w.partial]
    qps_ci = mean_interval([w.qps for w in checked])
    # percentile intervals also hold the spread between the windows (a drifting host)
    edges = [t0 + w.start_s for w in checked] + ([t0 + checked[-1].end_s] if checked else [])
    starts = a.start[measured]
    pct = with_window_spread(pct, starts, latency_all, edges)
    pct_ok = with_window_spread(pct_ok, starts[a.ok[measured]], latency_ok, edges)

    # open loop: arrivals due in the interval, and those never sent
    scheduled = dropped = None
    if is_open and raw.schedule is not None:
        scheduled = int(((raw.schedule >= tf) & (raw.schedule < t1)).sum())
        dropped = max(scheduled - n_sent, 0)

    # the client's own event loop
    lags_ms = np.asarray([lag_s for t, lag_s in raw.loop_lags if tf <= t < t1]) * 1e3
    loop_lag_p99 = nearest_rank(np.sort(lags_ms), 99) if lags_ms.size else None
    loop_lag_max = float(lags_ms.max()) if lags_ms.size else None

    # SLO
    slo = p.slo_p99_ms
    goodput = slo_met = None
    if slo is not None:
        goodput = per_s(int((latency_ok <= slo).sum()))
        p99 = pct["p99"].value
        slo_met = None if p99 is None else bool(p99 <= slo and error_rate < SLO_MAX_ERROR_RATE)

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

    # resources (the figures' interval when it holds samples)
    samples = [
        ResourceSample(
            t_s=round(t, 3), server_cpu_pct=c, server_rss_bytes=r, client_cpu_pct=cc, inflight=i
        )
        for t, c, r, cc, i in raw.samples
    ]
    in_figures = [x for x in samples if x.t_s >= figures_from] or samples
    server_cpu = [x.server_cpu_pct for x in in_figures if x.server_cpu_pct is not None]
    server_rss = [float(x.server_rss_bytes) for x in in_figures if x.server_rss_bytes is not None]
    client_cpu = [x.client_cpu_pct for x in in_figures if x.client_cpu_pct is not None]
    inflight = [float(x.inflight) for x in in_figures]
    cpu_saturated = bool(client_cpu) and max(client_cpu) >= options.client_saturation_pct
    loop_saturated = loop_lag_p99 is not None and loop_lag_p99 > options.max_loop_lag_ms

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
    if raw.stop_reason == "slo_missed":
        flag(
            "slo_missed",
            "invalid",
            f"stopped after {measured_s:.1f} s, when {raw.slo_breaches} requests had taken "
            f"longer than the {p.slo_p99_ms:g} ms SLO: p99 exceeds it once "
            f"{raw.slo_breach_limit} of the arrivals max_duration_s={p.max_duration_s:g} "
            "(+1 s) can hold do, and for the SLO's length more requests were in flight than "
            "arrive within it",
        )
    stability_reason = stab.reason + (f"; {window_note}" if window_note else "")
    # a measurement stopped because the SLO was missed was never meant to settle
    if not stab.stable and not raw.interrupted and raw.stop_reason != "slo_missed":
        checks = f"{raw.trials} check(s)" if raw.trials else "no check (too short)"
        flag(
            "unstable",
            "invalid",
            f"never stable after {checks}, stopped by {raw.stop_reason}: {stability_reason}",
        )
    if cpu_saturated or loop_saturated:
        why = []
        if cpu_saturated:
            why.append(
                f"its CPU reached {max(client_cpu):.0f}% of a core "
                f"(threshold {options.client_saturation_pct:g}%)"
            )
        if loop_saturated:
            why.append(
                f"its event loop woke {loop_lag_p99:.1f} ms late at p99 "
                f"(threshold {options.max_loop_lag_ms:g} ms)"
            )
        flag(
            "client_saturated",
            "warning",
            f"the client may limit the load or delay its timestamps: {'; '.join(why)}",
        )
    if is_open and lag is not None:
        lag_p99 = lag.p99 or 0.0
        limit = options.schedule_lag_limit_ms
        behind = f"send rate {per_s(n_sent):.1f}/s for a target of {p.rate:g}/s"
        if dropped or lag_p99 > limit:
            lost = f"{dropped} of {scheduled} scheduled arrivals never sent; " if dropped else ""
            flag(
                "schedule_lag",
                "invalid",
                f"the client fell behind its schedule beyond the bound: {lost}p99 schedule lag "
                f"{lag_p99:.1f} ms (limit {limit:g} ms); {behind}",
            )
        elif lag_p99 > options.max_schedule_lag_ms:
            flag(
                "schedule_lag",
                "warning",
                f"p99 schedule lag {lag_p99:.1f} ms > {options.max_schedule_lag_ms:g} ms; {behind}",
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
    if latency_all.size:
        h = histogram(latency_all)
        hist = HistogramData(
            lowest_us=HDR_LOWEST_US,
            highest_us=HDR_HIGHEST_US,
            significant_figures=HDR_SIGNIFICANT_FIGURES,
            hdr_encoded=h.hdr_encoded,
            buckets=[HistogramBucket(lower_ms=lo, upper_ms=hi, count=c) for lo, hi, c in h.buckets],
        )

    intervals: dict[str, float | None] = {}
    for key, value in pct.items():
        intervals[f"{key}_ms"] = value.value
        intervals[f"{key}_ci_low_ms"] = value.low
        intervals[f"{key}_ci_high_ms"] = value.high
        intervals[f"success_{key}_ms"] = pct_ok[key].value

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
        stability_reason=stability_reason,
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
        tokens_per_s=tokens_per_s if tokens_per_s is not None else client_tokens_per_s,
        client_tokens_per_s=client_tokens_per_s,
        server_tokens_per_s=server_tokens_per_s,
        target_rate=p.rate if is_open else None,
        send_rate=per_s(n_sent),
        latency_count=lat.count,
        min_ms=lat.min,
        max_ms=lat.max,
        mean_ms=lat.mean,
        stddev_ms=lat.stddev,
        **intervals,
        success_count=int(latency_ok.size),
        confidence=CONFIDENCE,
        percentile_notes=notes,
        qps_ci_low=qps_ci[0] if qps_ci else None,
        qps_ci_high=qps_ci[1] if qps_ci else None,
        window_s=window_s,
        stable_windows=len(stable_ids),
        figures_from_s=figures_from,
        requests_scheduled=scheduled,
        requests_dropped=dropped,
        loop_lag_p99_ms=loop_lag_p99,
        loop_lag_max_ms=loop_lag_max,
        slo_p99_ms=slo,
        goodput_per_s=goodput,
        slo_met=slo_met,
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
        client_saturated=cpu_saturated or loop_saturated,
        windows=[WindowResult(**w.__dict__, stable=w.index in stable_ids) for w in series],
        histogram=hist,
        resource_samples=samples,
        server_metrics_delta=metrics_delta,
    )
