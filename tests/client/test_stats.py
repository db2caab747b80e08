"""Statistics, windows, stability and histograms on synthetic data with known answers."""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from client.loadgen import arrival_offsets
from client.stats import Summary, Window, histogram, stability, windows


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


def test_windows_count_completions_and_mark_the_partial_tail():
    # 100 completions per second for 3.5 s, latency 10 ms; two failures in window 1
    end = np.arange(0, 3.5, 0.01)
    ok = np.ones(end.size, dtype=bool)
    ok[[120, 150]] = False
    lat = np.full(end.size, 10.0)
    series = windows(end, lat, ok, duration_s=3.5, window_s=1.0)
    assert [w.partial for w in series] == [False, False, False, True]
    assert [w.requests_ok for w in series] == [100, 98, 100, 50]
    assert series[1].errors == 2
    assert series[0].qps == pytest.approx(100.0)
    assert series[3].qps == pytest.approx(100.0)  # 50 in half a window
    assert series[2].p99_ms == 10.0


def _w(i: int, qps: float, p99: float | None, ok: int = 100, partial: bool = False) -> Window:
    return Window(i, i, i + 1, ok, 0, qps, p99, p99, partial)


def test_stability_accepts_windows_within_tolerance():
    series = [_w(0, 50, 90), _w(1, 100, 10), _w(2, 104, 10.5), _w(3, 97, 9.8)]
    st = stability(series, n=3, tolerance=0.10)
    assert st.stable, st.reason  # the warm first window is not among the last three
    assert st.qps_spread == pytest.approx(max(abs(q - 301 / 3) for q in (100, 104, 97)) / (301 / 3))


def test_stability_rejects_qps_or_p99_outside_tolerance():
    qps_off = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 130, 10)], 3, 0.10)
    assert not qps_off.stable and "QPS" in qps_off.reason
    p99_off = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 100, 14)], 3, 0.10)
    assert not p99_off.stable and "p99" in p99_off.reason and "QPS" not in p99_off.reason


def test_stability_needs_enough_full_windows_with_successes():
    short = stability([_w(0, 100, 10), _w(1, 100, 10), _w(2, 100, 10, partial=True)], 3, 0.1)
    assert not short.stable and "2 full window" in short.reason
    empty = stability([_w(0, 100, 10), _w(1, 0, None, ok=0), _w(2, 100, 10)], 3, 0.1)
    assert not empty.stable


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
