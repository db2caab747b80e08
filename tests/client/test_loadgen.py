"""The load generator against a real test server with injected, known behaviour.

Lower bounds are strict (a latency can never be below the injected delay); upper bounds leave
room for a shared, noisy 2-core machine. The statistics' own rules are tested on simulated
data in test_stats.py; these runs show that the engine applies them."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from client.loadgen import arrival_offsets, scenario_seed
from client.progress import PlainReporter
from client.runner import RunRequest, run_benchmark
from client.scenario import ClientOptions, ScenarioParams, StabilityParams, WarmupParams

from .conftest import run_in_process


def closed(name: str = "c", concurrency: int = 4, **kw) -> dict:
    base = {"min_requests": 1, "min_duration_s": 1.0, "max_duration_s": 20.0}
    return {"name": name, "mode": "closed", "concurrency": concurrency, **base, **kw}


def open_(name: str = "o", rate: float = 100, **kw) -> dict:
    base = {"min_requests": 1, "min_duration_s": 1.0, "max_duration_s": 20.0}
    return {"name": name, "mode": "open", "rate": rate, **base, **kw}


# one check, no extension: the figures are those of the whole measurement unless stable
ONE_CHECK = {"window_s": 0.5, "window_requests": 20, "windows": 3, "tolerance": 0.5,
             "extend_until_stable": False}  # fmt: skip


def codes(s, severity: str | None = None) -> list[str]:
    return [f.code for f in s.flags if severity is None or f.severity == severity]


def test_percentiles_match_the_injected_distribution(fake_server, tmp_path):
    # by arrival: 20 requests of 10 ms, 4 of 40 ms, 1 of 120 ms, repeated (80% / 16% / 4%)
    url = fake_server.url(delay="cycle:10x20:40x4:120x1")
    result = run_in_process(
        url, [closed(concurrency=8, min_requests=800, min_duration_s=0.5)], tmp_path / "r.json"
    )
    s = result.scenarios[0]
    assert s.valid, s.flags
    assert s.requests_ok >= 368 and s.requests_failed == 0
    assert s.latency_count == s.requests_ok == s.success_count
    expected = {"p50_ms": 10, "p90_ms": 40, "p95_ms": 40, "p99_ms": 120}
    for field, value in expected.items():
        got = getattr(s, field)
        assert value <= got < value + max(8.0, 0.25 * value), (field, got)
        assert getattr(s, f"success_{field}") == got  # no failure: the same requests
        low, high = (
            getattr(s, field.replace("_ms", "_ci_low_ms")),
            getattr(s, field.replace("_ms", "_ci_high_ms")),
        )
        assert low <= got <= high and value <= high
    # p99.9 of fewer than 3688 requests would be the maximum: not reported, and why
    assert s.p999_ms is None and s.p999_ci_low_ms is None
    assert s.percentile_notes["p999"].startswith("needs at least 3688 requests for a 95% interval")
    assert s.qps_ci_low is not None and s.qps_ci_low <= s.qps <= s.qps_ci_high
    assert 10 <= s.min_ms < 18 and 120 <= s.max_ms < 200
    assert 19.2 <= s.mean_ms < 19.2 + 8
    assert s.stddev_ms > 15  # sd of the pattern is about 22 ms
    # Little's law: 8 in flight / mean latency
    assert s.qps == pytest.approx(8 / (s.mean_ms / 1e3), rel=0.2)
    # the server's timing headers, read per response
    assert s.server_timing_responses == s.requests_ok
    assert s.server_tokenization_mean_ms == 0.25 and s.server_queue_p99_ms == 0.5
    assert s.server_inference_p50_ms == 10.0 and s.server_inference_p99_ms == 120.0
    assert s.server_total_mean_ms is None  # header absent: null, not 0
    assert s.server_tokens_per_s == pytest.approx(7 * s.texts_per_s)
    assert s.tokens_per_s == s.server_tokens_per_s  # the server's own counts when it has them
    assert 32 <= s.client_tokens_per_s / s.texts_per_s < 44  # the client's, kept apart
    assert s.histogram is not None
    assert sum(b.count for b in s.histogram.buckets) == s.latency_count


def test_open_loop_keeps_its_schedule_whatever_the_latency(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:50")
    result = run_in_process(
        url,
        [
            open_("constant", rate=200, arrival="constant", min_duration_s=2.0),
            open_("poisson", rate=150, arrival="poisson", min_duration_s=2.0),
        ],
        tmp_path / "r.json",
        options=ClientOptions(seed=11),
    )
    const, poisson = result.scenarios
    for s in (const, poisson):
        assert s.valid, s.flags
        assert s.requests_failed == 0
        # every scheduled arrival went out
        assert s.requests_dropped == 0 and s.requests_scheduled == s.requests_sent
        assert s.loop_lag_p99_ms is not None
        # 50 ms per request: a client that waited for answers could not keep the rate
        assert s.inflight_max >= 0.05 * s.target_rate * 0.8
        assert s.lag_p50_ms is not None and 0 <= s.lag_p50_ms < 3
        assert s.lag_p99_ms < 30
        assert 50 <= s.p50_ms < 65
        assert s.service_p50_ms <= s.p50_ms  # from the actual send, not the schedule
    assert const.send_rate == pytest.approx(200, rel=0.02)
    assert abs(const.requests_sent - 200 * const.duration_s) <= 2
    # Poisson: exactly the seeded schedule's arrivals inside the interval
    offsets = arrival_offsets(150, "poisson", scenario_seed(11, "poisson", "arrivals"))
    scheduled = sum(1 for _ in itertools.takewhile(lambda t: t < poisson.duration_s, offsets))
    assert abs(poisson.requests_sent - scheduled) <= 2
    assert poisson.send_rate == pytest.approx(150, rel=0.2)


def test_a_one_second_stall_shows_in_open_loop_p99_and_hides_in_closed_loop(fake_server, tmp_path):
    """Coordinated omission: the same 1 s stall, 1 s after the first request."""
    open_url = fake_server.url(delay="fixed:5", stall="1.0:1.0")
    opened = run_in_process(
        open_url,
        [open_("open", rate=150, arrival="constant", min_duration_s=3.0)],
        tmp_path / "o.json",
        stability=ONE_CHECK,  # figures over the whole measurement, stall included
    ).scenarios[0]
    # about 150 of 450 requests arrive during the stall and wait up to 1 s
    assert opened.p99_ms >= 900, opened.p99_ms
    assert 950 <= opened.max_ms < 1300
    assert opened.p50_ms < 60
    assert opened.p90_ms >= 500

    closed_url = fake_server.url(delay="fixed:2", stall="1.0:1.0")
    shut = run_in_process(
        closed_url,
        [closed("closed", concurrency=1, min_duration_s=3.0)],
        tmp_path / "c.json",
        # one check at 3 s, the stall among its windows: the figures cover everything
        stability={**ONE_CHECK, "window_s": 1.0},
    ).scenarios[0]
    # one worker: a single request waits out the stall; p99 does not see it, max does
    assert shut.max_ms >= 900
    assert shut.p99_ms < 100, shut.p99_ms
    assert shut.requests_ok > 150


def test_open_loop_latency_runs_from_the_schedule_when_the_client_stalls(fake_server, tmp_path):
    """A 0.4 s hiccup of the client itself (its event loop blocked, as by a GC pause): the
    requests scheduled meanwhile go out late, and their latency counts from the schedule."""
    url = fake_server.url(delay="fixed:5")
    req = RunRequest(
        url=url,
        scenarios=[
            ScenarioParams.model_validate(open_(rate=200, arrival="constant", min_duration_s=2.0))
        ],
        out=tmp_path / "r.json",
        warmup=WarmupParams(requests=0, duration_s=0),
        # one check: the figures keep the hiccup (extended, they would start after it)
        stability=StabilityParams.model_validate(ONE_CHECK),
        wait_timeout_s=10,
    )

    async def main():
        asyncio.get_running_loop().call_later(0.8, time.sleep, 0.4)  # blocks the loop
        return await run_benchmark(req, reporter=PlainReporter(quiet=True))

    s = asyncio.run(main()).scenarios[0]
    assert s.lag_max_ms >= 300, s.lag_max_ms
    assert s.p99_ms >= 300, s.p99_ms  # from the schedule: the hiccup counts ...
    assert s.service_p99_ms < 200, s.service_p99_ms  # ... though the server was quick
    assert "schedule_lag" in codes(s)


def test_errors_are_counted_by_kind_and_in_the_latency(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:2", e500=17, e429=23, bad=29, drop=31)
    result = run_in_process(
        url,
        [closed(concurrency=4, min_requests=600, min_duration_s=0.5)],
        tmp_path / "r.json",
        stability={**ONE_CHECK, "tolerance": 0.99},  # figures over every request
    )
    s = result.scenarios[0]
    server = fake_server.stats(url)["outcomes"]
    assert s.figures_from_s == 0
    assert s.errors == {
        "bad_body": server["bad"],
        "connection": server["drop"],
        "http_429": server["e429"],
        "http_500": server["e500"],
    }
    assert s.requests_ok == server["ok"] == s.success_count
    assert s.latency_count == s.requests_ok + s.requests_failed  # every request counts
    assert s.requests_failed == sum(s.errors.values())
    assert s.error_rate == pytest.approx(s.requests_failed / (s.requests_ok + s.requests_failed))
    assert s.min_ms < 2  # a fast 500 or 429 counts at its time to failure
    assert set(s.error_samples) == set(s.errors)
    assert "embedding" in s.error_samples["bad_body"] or "JSON" in s.error_samples["bad_body"]
    assert not s.valid
    assert codes(s, "invalid") == ["error_rate"]
    assert not result.valid
    # /metrics delta over the scenario (no warm-up here: every request)
    assert s.server_metrics_delta['fake_requests_total{outcome="ok"}'] == server["ok"]


def test_p99_counts_timeouts_at_the_timeout(fake_server, tmp_path):
    """Every 25th request hangs: 4% of the requests time out at 0.3 s. Success-only, p99 would
    be the server's 5 ms; over every request it is the timeout, where it belongs."""
    url = fake_server.url(delay="fixed:5", hang=25)
    s = run_in_process(
        url,
        [closed(concurrency=8, min_requests=400, min_duration_s=0.5)],
        tmp_path / "r.json",
        options=ClientOptions(request_timeout_s=0.3),
        stability={**ONE_CHECK, "tolerance": 0.99},
    ).scenarios[0]
    assert s.errors.get("timeout", 0) >= 10
    assert s.latency_count == s.requests_ok + s.requests_failed
    assert s.p99_ms is not None and s.p99_ms >= 300
    assert s.p90_ms < 100  # 4% of the requests are at the timeout: above p96
    assert s.success_p99_ms is not None and s.success_p99_ms < 100
    assert s.max_ms >= 300 and "error_rate" in codes(s, "invalid")


def test_an_error_rate_under_the_threshold_keeps_the_scenario_valid(fake_server, tmp_path):
    url = fake_server.url(e500=150)
    s = run_in_process(
        url, [closed(concurrency=4, min_requests=600, min_duration_s=0.3)], tmp_path / "r.json"
    ).scenarios[0]
    assert s.errors["http_500"] >= 3
    assert 0 < s.error_rate < 0.01
    assert s.valid, s.flags


def test_timeouts_are_counted(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:1", hang=40)
    s = run_in_process(
        url,
        [closed(concurrency=2, min_requests=120, min_duration_s=0.3)],
        tmp_path / "r.json",
        options=ClientOptions(request_timeout_s=0.4),
    ).scenarios[0]
    assert s.errors.get("timeout", 0) == fake_server.stats(url)["outcomes"]["hang"] >= 2
    assert 400 <= s.max_ms < 600  # a timeout counts at the timeout


def test_extend_until_stable_and_its_limits(fake_server, tmp_path):
    """A server that keeps slowing down (+40 ms per second) never stabilises: checked at every
    window boundary from min_duration_s, then invalid once max_trials checks failed."""
    strict = {"window_s": 0.2, "window_requests": 1, "windows": 3, "tolerance": 0.05}
    scenario = closed(concurrency=2, min_duration_s=0.6, max_duration_s=10)
    url = fake_server.url(delay="fixed:2", ramp=40)
    s = run_in_process(url, [scenario], tmp_path / "a.json", stability={**strict, "max_trials": 3})
    s = s.scenarios[0]
    assert (s.stop_reason, s.trials, s.stable) == ("max_trials", 3, False)
    assert 1.0 <= s.duration_s < 1.2  # checks at 0.6, 0.8 and 1.0 s
    assert codes(s, "invalid") == ["unstable"] and not s.valid
    assert "never stable after 3 check(s)" in s.flags[0].message
    assert s.stable_windows == 0 and s.figures_from_s == 0  # the whole measurement, flagged

    url = fake_server.url(delay="fixed:2", ramp=40)
    bounded = run_in_process(
        url,
        [{**scenario, "max_duration_s": 1.0}],
        tmp_path / "b.json",
        stability={**strict, "max_trials": 10},
    ).scenarios[0]
    assert bounded.stop_reason == "max_duration" and 1.0 <= bounded.duration_s < 1.3
    assert "unstable" in codes(bounded, "invalid")

    steady = fake_server.url(delay="fixed:2")
    lenient = {**strict, "tolerance": 0.9, "max_trials": 3}
    quick = {**scenario, "min_requests": 400}  # enough for p99 at the first check
    ok = run_in_process(steady, [quick], tmp_path / "c.json", stability=lenient).scenarios[0]
    assert (ok.stop_reason, ok.stable, ok.valid) == ("stable", True, True) and ok.trials < 3
    assert 0.6 <= ok.figures_from_s + ok.duration_s < 2.0
    assert ok.window_s == 0.2 and ok.stable_windows >= 3 and ok.p99_ms is not None


def test_a_stable_measurement_is_extended_until_its_figures_can_bound_p99(fake_server, tmp_path):
    """One worker at 10 ms: three windows of 0.5 s hold about 140 requests, stable but too
    few for a p99 interval (368). The checks go on until the stable windows hold enough."""
    url = fake_server.url(delay="fixed:10")
    s = run_in_process(
        url,
        [closed(concurrency=1, min_duration_s=1.5)],
        tmp_path / "r.json",
        stability={"window_s": 0.5, "window_requests": 10, "windows": 3, "tolerance": 0.5},
    ).scenarios[0]
    assert s.stop_reason == "stable" and s.trials > 1
    assert s.latency_count >= 368 and s.p99_ms is not None and "p99" not in s.percentile_notes


def test_a_scripted_slowdown_mid_run_is_left_out_of_the_figures(fake_server, tmp_path):
    """5 ms, then 20 ms from 1 s to 2 s, then 5 ms again. Extended until the last three
    windows agree, the figures start after the slowdown; with one check only, the run is
    unstable and invalid, its figures over everything."""
    stability = {"window_s": 1.0, "window_requests": 20, "windows": 3, "tolerance": 0.3}
    scenario = closed(concurrency=2, min_duration_s=1.5, max_duration_s=15)
    url = fake_server.url(delay="fixed:5", slow="1.0:1.0:20")
    s = run_in_process(url, [scenario], tmp_path / "a.json", stability=stability).scenarios[0]
    assert s.stable and s.valid, s.stability_reason
    assert s.trials >= 2 and s.stop_reason == "stable"
    assert s.figures_from_s >= 2.0, s.figures_from_s
    assert s.p99_ms < 15, s.p99_ms
    slow = [w for w in s.windows if w.p50_ms and w.p50_ms >= 18]
    assert slow and not any(w.stable for w in slow)
    assert all(w.stable for w in s.windows if w.start_s >= s.figures_from_s and not w.partial)

    url = fake_server.url(delay="fixed:5", slow="1.0:1.0:20")
    once = run_in_process(
        url, [scenario], tmp_path / "b.json", stability={**stability, "extend_until_stable": False}
    ).scenarios[0]
    assert not once.stable and not once.valid and "unstable" in codes(once, "invalid")
    assert once.figures_from_s == 0 and once.p99_ms >= 18  # the slowdown is in its figures


def test_open_loop_against_a_slower_server_drops_arrivals_and_is_invalid(fake_server, tmp_path):
    """200 arrivals/s into 4 connections of 50 ms (80/s at most): the dispatcher falls behind
    its schedule; what it never sends is counted dropped, and the scenario is invalid."""
    url = fake_server.url(delay="fixed:50")
    s = run_in_process(
        url,
        [open_(rate=200, arrival="constant", min_duration_s=1.5)],
        tmp_path / "r.json",
        options=ClientOptions(max_connections=4),
        stability=ONE_CHECK,
    ).scenarios[0]
    assert s.requests_scheduled == pytest.approx(200 * s.duration_s, abs=3)
    assert s.requests_dropped > 0.4 * s.requests_scheduled
    assert s.requests_sent + s.requests_dropped == s.requests_scheduled
    assert s.inflight_max <= 4
    assert s.lag_p99_ms > 500
    assert "schedule_lag" in codes(s, "invalid") and not s.valid
    assert "never sent" in next(f.message for f in s.flags if f.code == "schedule_lag")


def test_a_blocked_event_loop_flags_the_client_saturated(fake_server, tmp_path):
    """Something on the client's own loop takes 25 ms of every 50: its timestamps lag. The
    monitor sees it in both modes."""
    url = fake_server.url(delay="fixed:2")
    scenarios = [closed("c", concurrency=2, min_duration_s=1.0), open_("o", rate=100)]
    req = RunRequest(
        url=url,
        scenarios=[ScenarioParams.model_validate(x) for x in scenarios],
        out=tmp_path / "r.json",
        warmup=WarmupParams(requests=0, duration_s=0),
        stability=StabilityParams.model_validate(ONE_CHECK),
        wait_timeout_s=10,
    )

    async def main():
        loop = asyncio.get_running_loop()

        def block() -> None:
            time.sleep(0.025)
            loop.call_later(0.025, block)

        loop.call_later(0.05, block)
        return await run_benchmark(req, reporter=PlainReporter(quiet=True))

    blocked = asyncio.run(main()).scenarios
    for s in blocked:
        assert s.loop_lag_p99_ms is not None and s.loop_lag_p99_ms >= 15, s.loop_lag_p99_ms
        assert s.loop_lag_max_ms >= 20
        assert s.client_saturated and "client_saturated" in codes(s, "warning")
        assert "event loop" in next(f.message for f in s.flags if f.code == "client_saturated")

    quiet = run_in_process(url, scenarios[:1], tmp_path / "q.json", stability=ONE_CHECK)
    assert quiet.scenarios[0].loop_lag_p99_ms < blocked[0].loop_lag_p99_ms / 2


def test_goodput_counts_the_requests_within_the_slo(fake_server, tmp_path):
    # by arrival: 9 requests of 10 ms, 1 of 60 ms
    url = fake_server.url(delay="cycle:10x9:60x1")
    base = closed(concurrency=4, min_requests=450, min_duration_s=0.5)
    result = run_in_process(
        url,
        [{**base, "name": "tight", "slo_p99_ms": 30}, {**base, "name": "loose", "slo_p99_ms": 200}],
        tmp_path / "r.json",
        stability={**ONE_CHECK, "tolerance": 0.99},
    )
    tight, loose = result.scenarios
    assert tight.slo_p99_ms == 30 and tight.slo_met is False  # p99 is 60 ms
    assert tight.goodput_per_s == pytest.approx(0.9 * tight.qps, rel=0.06)
    assert loose.slo_met is True
    assert loose.goodput_per_s == pytest.approx(loose.qps, rel=0.06)
    plain = run_in_process(url, [base], tmp_path / "p.json", stability=ONE_CHECK).scenarios[0]
    assert plain.goodput_per_s is None and plain.slo_met is None


def test_max_duration_before_min_requests_invalidates(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:50")
    s = run_in_process(
        url,
        [closed(concurrency=1, min_requests=1000, min_duration_s=0.5, max_duration_s=1.0)],
        tmp_path / "r.json",
    ).scenarios[0]
    assert s.stop_reason == "max_duration"
    assert "min_requests_not_met" in [f.code for f in s.flags if f.severity == "invalid"]
    assert not s.valid


def test_warmup_is_excluded_from_the_statistics(fake_server, tmp_path):
    # the first 10 requests take 200 ms (a cold server), then 5 ms
    url = fake_server.url(delay="cycle:200x10:5x100000")
    s = run_in_process(
        url,
        [closed(concurrency=2, min_requests=100, min_duration_s=0.5)],
        tmp_path / "r.json",
        warmup={"requests": 10, "duration_s": 0.2},
        # the cold warm-up's throughput would size long windows
        stability={**ONE_CHECK, "window_requests": 2, "tolerance": 0.99},
    ).scenarios[0]
    assert s.warmup_requests >= 10
    assert s.max_ms < 200, s.max_ms  # no cold request (200 ms) measured


def test_server_resources_sampled_with_psutil_and_info_recorded(fake_server, tmp_path):
    url = fake_server.url()
    result = run_in_process(
        url,
        [closed(concurrency=4, min_duration_s=1.2)],
        tmp_path / "r.json",
        server_pid=fake_server.proc.pid,
        options=ClientOptions(sample_interval_s=0.25),
    )
    s = result.scenarios[0]
    assert s.resource_source == "psutil"
    assert len(s.resource_samples) >= 3
    assert s.server_rss_bytes_max > 10_000_000
    assert s.server_cpu_pct_mean is not None and s.server_cpu_pct_mean > 1
    assert s.client_cpu_pct_mean is not None and s.client_cpu_pct_mean > 1
    assert s.inflight_mean is not None and 0 < s.inflight_mean <= 4
    assert not s.client_saturated or "client_saturated" in [f.code for f in s.flags]
    md = result.metadata
    assert (md.model, md.variant, md.runtime, md.model_load_ms) == (
        "fake-model",
        "fp32",
        "fake",
        12.5,
    )
    assert md.server_config["batching"]["max_queue"] == 1024
    assert md.server_info["pid"] == fake_server.proc.pid


def test_openai_endpoint(fake_server, tmp_path):
    url = fake_server.url()
    s = run_in_process(
        url,
        [closed(concurrency=2, min_duration_s=0.3, texts_per_request=3)],
        tmp_path / "r.json",
        options=ClientOptions(endpoint="openai"),
    ).scenarios[0]
    assert s.valid and s.requests_ok > 10
    assert s.definition.endpoint == "openai"
    assert s.texts_per_s == pytest.approx(3 * s.qps)
    assert s.server_tokens_per_s == pytest.approx(s.qps * 3)  # the fake reports 3 per request
    assert not math.isnan(s.tokens_per_s)
