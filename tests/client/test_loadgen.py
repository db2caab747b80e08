"""The load generator against a real test server with injected, known behaviour.

Lower bounds are strict (a latency can never be below the injected delay); upper bounds leave
room for a shared, noisy 2-core machine."""

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


def test_percentiles_match_the_injected_distribution(fake_server, tmp_path):
    # by arrival: 20 requests of 10 ms, 4 of 40 ms, 1 of 120 ms, repeated (80% / 16% / 4%)
    url = fake_server.url(delay="cycle:10x20:40x4:120x1")
    result = run_in_process(
        url, [closed(concurrency=8, min_requests=500, min_duration_s=0.5)], tmp_path / "r.json"
    )
    s = result.scenarios[0]
    assert s.valid, s.flags
    assert s.requests_ok >= 500 and s.requests_failed == 0
    assert s.latency_count == s.requests_ok
    expected = {"p50_ms": 10, "p90_ms": 40, "p95_ms": 40, "p99_ms": 120, "p999_ms": 120}
    for field, value in expected.items():
        got = getattr(s, field)
        assert value <= got < value + max(8.0, 0.25 * value), (field, got)
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
    assert 32 <= s.tokens_per_s / s.texts_per_s < 44
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
        [open_("open", rate=100, arrival="constant", min_duration_s=3.0)],
        tmp_path / "o.json",
    ).scenarios[0]
    # about 100 of 300 requests arrive during the stall and wait up to 1 s
    assert opened.p99_ms >= 900, opened.p99_ms
    assert 950 <= opened.max_ms < 1300
    assert opened.p50_ms < 60
    assert opened.p90_ms >= 500

    closed_url = fake_server.url(delay="fixed:5", stall="1.0:1.0")
    shut = run_in_process(
        closed_url, [closed("closed", concurrency=1, min_duration_s=3.0)], tmp_path / "c.json"
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
            ScenarioParams.model_validate(open_(rate=200, arrival="constant", min_duration_s=1.5))
        ],
        out=tmp_path / "r.json",
        warmup=WarmupParams(requests=0, duration_s=0),
        stability=StabilityParams(window_s=0.5),
        wait_timeout_s=10,
    )

    async def main():
        asyncio.get_running_loop().call_later(0.8, time.sleep, 0.4)  # blocks the loop
        return await run_benchmark(req, reporter=PlainReporter(quiet=True))

    s = asyncio.run(main()).scenarios[0]
    assert s.lag_max_ms >= 300, s.lag_max_ms
    assert s.p99_ms >= 300, s.p99_ms  # from the schedule: the hiccup counts ...
    assert s.service_p99_ms < 200, s.service_p99_ms  # ... though the server was quick
    assert "schedule_lag" in [f.code for f in s.flags]


def test_errors_are_counted_by_kind_and_kept_out_of_latency(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:2", e500=17, e429=23, bad=29, drop=31)
    result = run_in_process(
        url, [closed(concurrency=4, min_requests=600, min_duration_s=0.5)], tmp_path / "r.json"
    )
    s = result.scenarios[0]
    server = fake_server.stats(url)["outcomes"]
    assert s.errors == {
        "bad_body": server["bad"],
        "connection": server["drop"],
        "http_429": server["e429"],
        "http_500": server["e500"],
    }
    assert s.requests_ok == server["ok"] == s.latency_count
    assert s.requests_failed == sum(s.errors.values())
    assert s.error_rate == pytest.approx(s.requests_failed / (s.requests_ok + s.requests_failed))
    assert s.min_ms >= 2  # no fast failure leaked into the latency statistics
    assert set(s.error_samples) == set(s.errors)
    assert "embedding" in s.error_samples["bad_body"] or "JSON" in s.error_samples["bad_body"]
    assert not s.valid
    assert [f.code for f in s.flags if f.severity == "invalid"] == ["error_rate"]
    assert not result.valid
    # /metrics delta over the scenario (no warm-up here: every request)
    assert s.server_metrics_delta['fake_requests_total{outcome="ok"}'] == server["ok"]


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
    assert s.max_ms < 400


def test_extend_until_stable_and_its_limits(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:2")
    never = {"window_s": 0.2, "windows": 3, "tolerance": 1e-9, "extend_until_stable": True}
    scenario = closed(concurrency=2, min_duration_s=0.6, max_duration_s=10)
    s = run_in_process(url, [scenario], tmp_path / "a.json", stability={**never, "max_trials": 3})
    s = s.scenarios[0]
    assert (s.stop_reason, s.trials, s.stable) == ("max_trials", 3, False)
    assert 1.75 <= s.duration_s < 2.5  # 0.6 s, then two extensions of 3 x 0.2 s
    assert "unstable" in [f.code for f in s.flags] and s.valid  # unstable is a warning

    bounded = run_in_process(
        url,
        [{**scenario, "max_duration_s": 1.0}],
        tmp_path / "b.json",
        stability={**never, "max_trials": 10},
    ).scenarios[0]
    assert bounded.stop_reason == "max_duration" and 1.0 <= bounded.duration_s < 1.3

    lenient = {**never, "tolerance": 0.99, "max_trials": 3}
    ok = run_in_process(url, [scenario], tmp_path / "c.json", stability=lenient).scenarios[0]
    assert (ok.stop_reason, ok.trials, ok.stable) == ("stable", 1, True)
    assert 0.6 <= ok.duration_s < 0.9


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
    ).scenarios[0]
    assert s.warmup_requests >= 10
    assert s.max_ms < 150, s.max_ms  # no cold request measured


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
