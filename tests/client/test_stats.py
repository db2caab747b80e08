"""Statistics on synthetic data with known answers: percentiles and their distribution-free
intervals, throughput intervals, windows, the stability rule (on simulated steady and
disturbed series, closed and open loop), histograms, arrivals."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from client.loadgen import arrival_offsets
from client.scenario import StabilityParams
from client.stats import (
    Summary,
    Window,
    agreement,
    histogram,
    mean_interval,
    order_statistic_ranks,
    percentile_with_interval,
    percentiles_with_intervals,
    required_count,
    stability,
    tail_design_effect,
    window_length,
    windows,
    with_window_spread,
)

# ------------------------------------------------------------------ percentiles


def test_percentiles_are_nearest_rank_on_known_data():
    s = Summary.of(np.arange(1, 1001, dtype=float))
    assert (s.count, s.min, s.max) == (1000, 1.0, 1000.0)
    assert (s.p50, s.p90, s.p95, s.p99, s.p999) == (500.0, 900.0, 950.0, 990.0, 999.0)
    assert s.mean == pytest.approx(500.5)
    assert s.stddev == pytest.approx(statistics.stdev(range(1, 1001)))


def test_percentiles_of_a_shuffled_skewed_sample():
    rng = np.random.default_rng(1)
    values = np.concatenate([np.full(990, 1.0), np.full(10, 1000.0)])
    rng.shuffle(values)
    s = Summary.of(values)
    assert s.p99 == 1.0  # exactly 99% are 1 ms: p99 is 1 ...
    assert s.p999 == 1000.0  # ... and the slowest 1% shows from p99.9
    assert s.max == 1000.0


def test_empty_summary_is_all_null_not_zero():
    s = Summary.of(np.array([]))
    assert s.count == 0
    assert s.p50 is None and s.mean is None and s.max is None
    assert percentiles_with_intervals(np.array([]))["p99"].value is None


# ------------------------------------------------------------------ order-statistic intervals


def _binomial_pmf(n: int, q: float) -> list[float]:
    return [math.exp(math.log(math.comb(n, j)) + j * math.log(q) + (n - j) * math.log1p(-q))
            for j in range(n + 1)]  # fmt: skip


@pytest.mark.parametrize("n", [6, 20, 37, 100, 368, 1000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_interval_ranks_are_the_exact_binomial_ones(n, q):
    """l - 1 is the largest k with P(B <= k) <= 2.5%, u - 1 the smallest with P(B <= k) >=
    97.5%, B ~ Binomial(n, q) - checked against the binomial summed term by term."""
    lower, upper = order_statistic_ranks(n, q)
    cdf = list(itertools.accumulate(_binomial_pmf(n, q)))
    want_lower = max((k + 1 for k in range(n) if cdf[k] <= 0.025), default=0)
    want_upper = min((k + 1 for k in range(n) if cdf[k] >= 0.975), default=n + 1)
    assert (lower, upper) == (want_lower, want_upper)
    if lower >= 1 and upper <= n:
        assert cdf[upper - 1] - cdf[lower - 1] >= 0.95  # the coverage it promises


def test_the_sample_sizes_a_percentile_needs():
    assert required_count(0.999) == 3688  # (0.999)^n <= 2.5%
    assert required_count(0.99) == 368
    assert required_count(0.5) == 6
    assert order_statistic_ranks(3687, 0.999)[1] == 3688  # one short: no upper bound
    assert order_statistic_ranks(3688, 0.999)[1] == 3688


def test_percentile_intervals_cover_the_true_quantiles_of_a_uniform():
    """Latencies uniform on [10, 30] ms: the true q-quantile is 10 + 20 q. Over 400 samples
    of 1000 requests, each 95% interval holds it in at least 93% of them (binomial noise
    of 400 trials), and no more than its exactness allows."""
    rng = np.random.default_rng(14)
    trials = 400
    hits = {"p50": 0, "p90": 0, "p99": 0}
    truth = {"p50": 20.0, "p90": 28.0, "p99": 29.8}
    for _ in range(trials):
        pct = percentiles_with_intervals(rng.uniform(10, 30, 1000))
        for key in hits:
            p = pct[key]
            assert p.low is not None and p.high is not None and p.value is not None
            assert p.low <= p.value <= p.high
            hits[key] += p.low <= truth[key] <= p.high
        assert pct["p999"].value is None and pct["p999"].low is None  # 1000 < 3688
        assert pct["p999"].note == "needs at least 3688 requests for a 95% interval; 1000 measured"
    for key, count in hits.items():
        assert count / trials >= 0.93, (key, count)


def test_percentile_intervals_hold_a_drift_between_the_windows():
    """Three windows of 400 requests whose level drifts by 0, +10%, +20% (a host slowing
    down): the order-statistic interval describes one distribution and is narrow; the run's
    p50 interval must also hold the windows' spread. Without drift it grows only by what three
    windows' Student-t quantile (4.3) costs."""
    rng = np.random.default_rng(7)
    start = np.arange(1200) / 100.0  # 100 requests/s, windows of 4 s
    base = rng.uniform(10, 12, 1200)
    edges = [0.0, 4.0, 8.0, 12.0]
    drifting = base * np.repeat([1.0, 1.1, 1.2], 400)
    plain = percentiles_with_intervals(drifting)
    widened = with_window_spread(plain, start, drifting, edges)
    window_p50s = [float(np.median(drifting[i * 400 : (i + 1) * 400])) for i in range(3)]
    assert plain["p50"].high < max(window_p50s)  # one distribution: too narrow for the drift
    assert widened["p50"].low <= min(window_p50s) and widened["p50"].high >= max(window_p50s)
    assert widened["p50"].value == plain["p50"].value
    assert widened["p999"] == plain["p999"]  # windows too small for p99.9: unchanged
    steady = percentiles_with_intervals(base)
    kept = with_window_spread(steady, start, base, edges)
    assert kept["p50"].high - kept["p50"].low < 3 * (steady["p50"].high - steady["p50"].low)


def test_a_percentile_the_sample_cannot_bound_is_none_with_what_it_needs():
    v = np.sort(np.random.default_rng(2).uniform(10, 30, 200))
    p99 = percentile_with_interval(v, 99)
    assert p99.value is None and p99.note == (
        "needs at least 368 requests for a 95% interval; 200 measured"
    )
    assert percentile_with_interval(v, 95).value is not None


def test_throughput_interval_over_windows_has_its_coverage():
    """Batch means with Student's t: three windows of a known mean of 100."""
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(2000):
        lo, hi = mean_interval(list(rng.normal(100, 5, 3)))
        hits += lo <= 100 <= hi
    assert 0.93 <= hits / 2000 <= 0.97
    assert mean_interval([100.0]) is None


# ------------------------------------------------------------------ windows


def test_windows_count_completions_and_mark_the_partial_tail():
    # 100 completions per second for 3.5 s, latency 10 ms; two failures in window 1
    end = np.arange(0, 3.5, 0.01)
    ok = np.ones(end.size, dtype=bool)
    ok[[120, 150]] = False
    lat = np.full(end.size, 10.0)
    series = windows(end, lat, ok, duration_s=3.5, window_s=1.0)
    assert [w.partial for w in series] == [False, False, False, True]
    assert [w.requests_ok for w in series] == [100, 98, 100, 50]
    assert series[1].errors == 2 and series[1].requests == 100
    assert series[0].qps == pytest.approx(100.0)
    assert series[3].qps == pytest.approx(100.0)  # 50 in half a window
    assert series[2].p99_ms == 10.0
    assert series[0].inflight == pytest.approx(1.0)  # 100/s x 10 ms: Little's law
    assert series[0].arrivals is None and series[0].throughput == series[0].qps


def test_open_loop_windows_compare_completions_with_arrivals():
    arrivals = np.arange(0, 3.0, 0.02)  # 50/s
    end = arrivals + 0.005
    ok = np.ones(end.size, dtype=bool)
    ok[:20] = False  # the first window completes 30 of its 50 arrivals
    series = windows(end, np.full(end.size, 5.0), ok, 3.0, 1.0, arrivals_s=arrivals)
    assert [w.arrivals for w in series] == [50, 50, 50]
    assert [round(w.throughput, 2) for w in series] == [0.6, 1.0, 1.0]


def test_window_length_holds_enough_requests():
    # the nightly scenarios with the defaults (3 windows of 135 hold the 368 that p99 needs)
    assert window_length(2.0, 135, 150, 3, 60) == (2.0, None)  # closed-c1: 2 s hold 300
    assert window_length(2.0, 135, 50, 3, 60) == (2.7, None)  # open-r50
    assert window_length(2.0, 135, 25, 3, 60) == (5.4, None)  # closed-c4-batch8-medium
    length, note = window_length(2.0, 125, 1.0, 3, 60)
    assert length == 20.0 and "capped" in (note or "") and "about 20 requests" in (note or "")


# ------------------------------------------------------------------ stability


def _w(
    i: int,
    qps: float,
    p99: float,
    ok: int = 100,
    partial: bool = False,
    p50: float | None = None,
    band: float = 0.0,
) -> Window:
    """A window whose p99 (and p50) is known to +-band (relative)."""
    p50 = p50 if p50 is not None else p99 / 2
    return Window(
        index=i,
        start_s=i,
        end_s=i + 1,
        requests=ok,
        requests_ok=ok,
        errors=0,
        qps=qps,
        arrivals=None,
        throughput=qps,
        p50_ms=p50,
        p99_ms=p99,
        p99_low_ms=p99 * (1 - band),
        p99_high_ms=p99 * (1 + band),
        p50_low_ms=p50,
        p50_high_ms=p50,
        partial=partial,
        inflight=0.0,
    )


def test_the_figures_start_after_a_transient_start():
    """The issue's example: windows with QPS 50, 60, 100, 100, 100 used to pass with figures
    over all five. Now the last three agree, and the stable run - where the figures start -
    begins at the first window that agrees with them: the third."""
    series = [_w(i, q, 10) for i, q in enumerate([50, 60, 100, 100, 100])]
    st = stability(series, n=3, tolerance=0.10)
    assert st.stable, st.reason
    assert (st.first, st.count) == (2, 3)
    assert st.qps_spread == 0.0
    # a window within the tolerance of the last three joins the run
    series = [_w(i, q, 10) for i, q in enumerate([50, 96, 100, 104, 100])]
    assert stability(series, 3, 0.10).first == 1


def test_stability_is_max_over_min_on_throughput_and_p99():
    ok = stability([_w(0, 100, 10), _w(1, 109, 10), _w(2, 101, 10.9)], 3, 0.10)
    assert ok.stable and ok.qps_spread == pytest.approx(0.09)
    qps_off = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 111, 10)], 3, 0.10)
    assert not qps_off.stable and "QPS differs by 11.0%" in qps_off.reason
    p99_off = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 100, 11.2)], 3, 0.10)
    assert not p99_off.stable and "p99" in p99_off.reason and "QPS" not in p99_off.reason
    p50_off = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 100, 10, p50=7)], 3, 0.10)
    assert not p50_off.stable and "p50" in p50_off.reason


def test_p99_differences_within_the_windows_sampling_range_are_not_instability():
    """Three windows whose p99s differ by 20% but whose sampling ranges (+-15%) overlap."""
    series = [_w(i, 100, p99, p50=5, band=0.15) for i, p99 in enumerate([10, 12, 11])]
    st = stability(series, 3, 0.10)
    assert st.stable and st.p99_spread == pytest.approx(0.2)
    assert "within its sampling range" in st.reason
    tight = [_w(i, 100, p99, p50=5, band=0.01) for i, p99 in enumerate([10, 12, 11])]
    assert not stability(tight, 3, 0.10).stable


def test_stability_needs_enough_full_windows_with_successes():
    short = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 100, 10, partial=True)], 3, 0.1)
    assert not short.stable and "2 full window" in short.reason
    empty = stability([_w(0, 100, 10), _w(1, 0, 10, ok=0), _w(2, 100, 10)], 3, 0.1)
    assert not empty.stable


# simulated runs: a FIFO server fed by the load, latencies as the client would see them


def _fifo(arrivals: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Completion times of a single FIFO server (Lindley's recursion)."""
    end = np.empty_like(arrivals)
    free = 0.0
    for i, (a, s) in enumerate(zip(arrivals, service, strict=True)):
        free = max(free, a) + s
        end[i] = free
    return end


def _service(rng: np.random.Generator, n: int, median_s: float) -> np.ndarray:
    """Right-skewed service times with 1% hiccups of 1.5-3x: a p99 shaped by rare events."""
    s = median_s * rng.lognormal(0, 0.15, n)
    hiccup = rng.random(n) < 0.01
    s[hiccup] *= 1 + rng.uniform(0.5, 2.0, hiccup.sum())
    return s


def _judge(start, end, arrivals, window_s, k=3):
    """The check at the k-th window boundary, as the engine makes it (3 windows, 10%; the
    windows as client.loadgen.measure_windows cuts them)."""
    t = k * window_s
    sel = end < t
    lat = (end[sel] - start[sel]) * 1e3
    series = windows(
        end[sel],
        lat,
        np.ones(sel.sum(), dtype=bool),
        t,
        window_s,
        None if arrivals is None else arrivals[arrivals < t],
        design_effect=tail_design_effect(start[sel], lat),
    )
    return series, stability(series, 3, 0.10)


def _stable_within(start, end, arrivals, window_s, first_k, trials=10):
    """The engine's extension: a check at every boundary from first_k, up to `trials`."""
    for k in range(first_k, first_k + trials):
        series, st = _judge(start, end, arrivals, window_s, k)
        if st.stable:
            break
    return series, st


def _open_run(seed: int, rate: float = 50.0, seconds: float = 12.0):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.5)))
    arrivals = arrivals[arrivals < seconds]
    end = _fifo(arrivals, _service(rng, arrivals.size, 0.0067))  # capacity ~150/s
    return arrivals, end


def test_a_steady_open_loop_run_at_50_per_s_is_stable_in_19_of_20_seeds():
    """open-r50-poisson with its default windows (2.7 s: 135 arrivals), judged at the first
    check, without extension. The old rule - raw QPS and point p99 within 10% - flags most
    of these perfectly steady runs: the window's QPS follows the Poisson arrivals and its
    p99 is one of its two slowest requests."""
    window_s, _ = window_length(2.0, StabilityParams().window_requests, 50, 3, 60)
    stable = old_rule_unstable = 0
    for seed in range(20):
        arrivals, end = _open_run(seed)
        series, st = _judge(arrivals, end, arrivals, window_s)
        stable += st.stable
        agree = agreement(series[-3:])
        assert agree is not None
        qps = [w.qps for w in series[-3:]]
        old_rule_unstable += max(qps) / min(qps) - 1 > 0.10 or agree.p99_spread > 0.10
    assert stable >= 19, stable
    assert old_rule_unstable >= 10, old_rule_unstable


def test_an_overloaded_open_loop_run_is_never_stable():
    """Arrivals at 120/s into a server of 85/s, as a real search probe measured it: every
    window completes the same share of its arrivals (0.71) and its latencies all sit in one
    long queue whose sampling ranges overlap - the windows agree with each other and were
    judged stable, with p50 5.2 s. But the backlog grows by 70 requests a window."""

    def overloaded(i: int, inflight: float) -> Window:
        w = _w(i, 85, 5700, p50=5200, band=0.3)
        return replace(w, arrivals=240, throughput=170 / 240, inflight=inflight)

    series = [overloaded(i, 300 + 70 * i) for i in range(3)]
    st = stability(series, 3, 0.10)
    assert not st.stable and "the backlog grows: 300 -> 440 requests in flight" in st.reason
    # a steady queue (the same windows, the backlog not growing) is stable
    steady = [replace(w, inflight=300) for w in series]
    assert stability(steady, 3, 0.10).stable


def test_a_steady_closed_loop_run_is_stable_in_19_of_20_seeds():
    """closed-c1 (about 150 QPS, 2 s windows): latencies back to back."""
    stable = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        service = _service(rng, 2500, 0.0067) + 0.0003  # 0.3 ms of client between requests
        end = np.cumsum(service)
        start = end - service + 0.0003
        stable += _judge(start, end, None, 2.0, k=5)[1].stable  # min_duration 10 s
    assert stable >= 19, stable


def test_a_batching_server_s_tail_is_judged_by_its_batches():
    """Closed loop at concurrency 16 against a server that answers 16 requests at once:
    its tail moves batch by batch, 16 requests at a time. The design effect sees the
    batches; with it, steady runs are stable (within the checks the engine makes); counted
    as independent requests, the windows' p99 ranges are far too narrow and steady runs are
    flagged."""
    stable = naive = 0
    for seed in range(20):
        rng = np.random.default_rng(200 + seed)
        batch = _service(rng, 160, 0.107)  # 16 texts of 6.7 ms each
        batch_end = np.cumsum(batch)
        end = np.repeat(batch_end, 16) + rng.uniform(0, 0.0005, 16 * 160)
        start = np.repeat(batch_end - batch, 16)
        lat = (end - start) * 1e3
        assert 8 <= tail_design_effect(start, lat) <= 24
        stable += _stable_within(start, end, None, 2.0, first_k=5)[1].stable
        sel = end < 10.0
        series = windows(end[sel], lat[sel], np.ones(sel.sum(), bool), 10.0, 2.0)
        naive += stability(series, 3, 0.10).stable
    assert stable == 20, stable
    assert naive <= 14, naive


def test_a_slowdown_in_a_simulated_run_is_flagged_or_left_out():
    """Open loop at 50/s; the server runs at 40% of its speed for one window's length.
    Judged at each boundary as the engine does: unstable while the slowdown is among the
    last three windows, and once stable, the figures start after it."""
    window_s, _ = window_length(2.0, StabilityParams().window_requests, 50, 3, 60)
    caught = 0
    for seed in range(10):
        rng = np.random.default_rng(300 + seed)
        arrivals = np.cumsum(rng.exponential(1 / 50, 2000))
        arrivals = arrivals[arrivals < 30]
        service = _service(rng, arrivals.size, 0.0067)
        slow = (arrivals >= 1.5 * window_s) & (arrivals < 2.5 * window_s)
        service[slow] *= 2.5
        end = _fifo(arrivals, service)
        series, st = _stable_within(arrivals, end, arrivals, window_s, first_k=4)
        assert st.first is not None, st.reason
        caught += series[st.first].start_s >= 2.5 * window_s - 1e-9
    assert caught >= 9, caught


def test_design_effect_is_one_for_independent_latencies():
    rng = np.random.default_rng(5)
    lat = rng.lognormal(2, 0.3, 5000)
    start = np.arange(5000) * 0.01
    assert tail_design_effect(start, lat) < 1.3


# ------------------------------------------------------------------ histogram, arrivals


def test_histogram_round_trips_through_hdr_and_buckets():
    rng = np.random.default_rng(7)
    lat = rng.lognormal(mean=np.log(20), sigma=0.5, size=5000)
    h = histogram(lat)
    decoded = HdrHistogram.decode(h.hdr_encoded)
    assert decoded.get_total_count() == lat.size
    exact_p99_us = np.percentile(lat, 99, method="inverted_cdf") * 1000
    assert decoded.get_value_at_percentile(99) == pytest.approx(exact_p99_us, rel=2e-3)
    assert sum(c for _, _, c in h.buckets) == lat.size
    assert all(lo < hi for lo, hi, _ in h.buckets)


def test_constant_arrivals_are_evenly_spaced():
    offsets = list(itertools.islice(arrival_offsets(200, "constant", seed=1), 5))
    assert offsets == pytest.approx([0, 0.005, 0.010, 0.015, 0.020])


def test_poisson_arrivals_are_seeded_and_have_the_right_rate():
    a = list(itertools.islice(arrival_offsets(100, "poisson", seed=3), 20000))
    b = list(itertools.islice(arrival_offsets(100, "poisson", seed=3), 20000))
    c = list(itertools.islice(arrival_offsets(100, "poisson", seed=4), 20000))
    assert a == b and a != c
    gaps = np.diff([0.0, *a])
    assert gaps.mean() == pytest.approx(0.01, rel=0.03)
    # exponential gaps: the standard deviation equals the mean
    assert gaps.std() == pytest.approx(0.01, rel=0.05)


def test_intervals_of_clustered_requests_are_widened_by_their_design_effect():
    """A batching server: 100 batches of 16 requests share one latency each. Taken as 1600
    independent requests, the 95% intervals would hold the true p50 and p90 about a third
    of the time; over the effective sample (n / the measured design effect) they hold it
    as promised."""
    rng = np.random.default_rng(9)
    truth = {"p50": 100.0, "p90": 100.0 * math.exp(0.2 * 1.2815515655446004)}
    naive = {"p50": 0, "p90": 0}
    honest = {"p50": 0, "p90": 0}
    trials = 200
    for _ in range(trials):
        batch_ms = rng.lognormal(np.log(100), 0.2, 100)
        lat = np.repeat(batch_ms, 16) + rng.uniform(0, 0.05, 1600)
        start = np.repeat(np.cumsum(batch_ms) - batch_ms, 16) / 1e3  # back to back
        design = tail_design_effect(start, lat)
        assert 6 <= design <= 32  # about the batch size (16), give or take its noise
        plain = percentiles_with_intervals(lat)
        widened = percentiles_with_intervals(lat, design_effect=design)
        for key, value in truth.items():
            naive[key] += plain[key].low <= value <= plain[key].high
            honest[key] += widened[key].low <= value <= widened[key].high
            assert widened[key].value == plain[key].value  # the estimate itself is the same
    for key in truth:
        assert naive[key] / trials < 0.6, naive
        assert honest[key] / trials >= 0.92, honest
