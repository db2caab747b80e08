"""Statistics: exact percentiles, windows, perf_analyzer-style stability, histogram data.

Percentiles are exact, computed from every measured latency with the nearest-rank definition
(numpy's `inverted_cdf`, the definition HdrHistogram uses): p99 is the smallest latency that
at least 99% of the requests did not exceed. The HDR histogram kept in the result (for
merging runs and plotting) is built from the same values after the run, so the hot path only
appends to lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES: dict[str, float] = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p999": 99.9}
HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000  # one hour
HDR_SIGNIFICANT_FIGURES = 3
# Plain histogram buckets: 20 per decade from 10 us to 1000 s (log-spaced edges, in ms).
BUCKET_EDGES_MS: np.ndarray = np.logspace(-2, 6, 8 * 20 + 1)


def nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """The smallest value that at least q% of the values do not exceed (q in (0, 100])."""
    n = sorted_values.size
    # the epsilon keeps 99.9% of 1000 at rank 999 despite binary floating point
    rank = min(n, max(1, math.ceil(q / 100.0 * n - 1e-9)))
    return float(sorted_values[rank - 1])


def percentile(values: np.ndarray, q: float) -> float:
    return nearest_rank(np.sort(np.asarray(values, dtype=np.float64)), q)


@dataclass(frozen=True)
class Summary:
    count: int
    min: float | None
    max: float | None
    mean: float | None
    stddev: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    p999: float | None

    @classmethod
    def of(cls, values: np.ndarray) -> Summary:
        v = np.asarray(values, dtype=np.float64)
        v = np.sort(v[~np.isnan(v)])
        if v.size == 0:
            return cls(0, None, None, None, None, None, None, None, None, None)
        pct = {k: nearest_rank(v, q) for k, q in PERCENTILES.items()}
        return cls(
            count=int(v.size),
            min=float(v.min()),
            max=float(v.max()),
            mean=float(v.mean()),
            stddev=float(v.std(ddof=1)) if v.size > 1 else 0.0,
            **pct,
        )


@dataclass(frozen=True)
class Window:
    index: int
    start_s: float  # from the start of the measurement
    end_s: float
    requests_ok: int
    errors: int
    qps: float
    p50_ms: float | None
    p99_ms: float | None
    partial: bool


def windows(
    end_s: np.ndarray,
    latency_ms: np.ndarray,
    ok: np.ndarray,
    duration_s: float,
    window_s: float,
) -> list[Window]:
    """Per-window throughput and latency. A request belongs to the window in which it
    completed (end_s: completion time from the measurement start); QPS is the successful
    completions in the window over its length. Only the last window can be partial."""
    out: list[Window] = []
    n_full = math.floor(duration_s / window_s + 1e-9)
    bounds = [(i * window_s, (i + 1) * window_s, False) for i in range(n_full)]
    if duration_s - n_full * window_s > 1e-6:
        bounds.append((n_full * window_s, duration_s, True))
    for i, (lo, hi, partial) in enumerate(bounds):
        sel = (end_s >= lo) & (end_s < hi)
        good = sel & ok
        lat = latency_ms[good]
        out.append(
            Window(
                index=i,
                start_s=lo,
                end_s=hi,
                requests_ok=int(good.sum()),
                errors=int((sel & ~ok).sum()),
                qps=float(good.sum()) / (hi - lo),
                p50_ms=percentile(lat, 50) if lat.size else None,
                p99_ms=percentile(lat, 99) if lat.size else None,
                partial=partial,
            )
        )
    return out


@dataclass(frozen=True)
class Stability:
    stable: bool
    reason: str
    qps_spread: float | None  # max relative deviation from the mean, over the checked windows
    p99_spread: float | None


def _spread(values: list[float]) -> float:
    mean = sum(values) / len(values)
    if mean <= 0:
        return math.inf
    return max(abs(v - mean) for v in values) / mean


def stability(series: list[Window], n: int, tolerance: float) -> Stability:
    """Stable when QPS and p99 of each of the last `n` full windows lie within `tolerance`
    (relative) of the mean of those windows, as perf_analyzer checks its last measurements."""
    full = [w for w in series if not w.partial]
    if len(full) < n:
        return Stability(False, f"only {len(full)} full window(s), {n} needed", None, None)
    last = full[-n:]
    if any(w.requests_ok == 0 or w.p99_ms is None for w in last):
        return Stability(False, "a window without successful requests", None, None)
    qps = _spread([w.qps for w in last])
    p99 = _spread([w.p99_ms for w in last if w.p99_ms is not None])
    problems = []
    if qps > tolerance:
        problems.append(f"QPS varies {qps:.1%} from the mean")
    if p99 > tolerance:
        problems.append(f"p99 varies {p99:.1%} from the mean")
    if problems:
        return Stability(
            False,
            f"last {n} windows: {'; '.join(problems)} (tolerance {tolerance:.0%})",
            qps,
            p99,
        )
    return Stability(True, f"last {n} windows within {tolerance:.0%}", qps, p99)


@dataclass(frozen=True)
class Histogram:
    hdr_encoded: str  # HdrHistogram V2 compressed, base64 (microseconds)
    buckets: list[tuple[float, float, int]]  # (lower_ms, upper_ms, count), non-empty only


def histogram(latency_ms: np.ndarray) -> Histogram:
    hist = HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_SIGNIFICANT_FIGURES)
    us = np.clip(np.rint(latency_ms * 1000.0), HDR_LOWEST_US, HDR_HIGHEST_US).astype(np.int64)
    values, counts = np.unique(us, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)
    encoded = hist.encode()
    clipped = np.clip(latency_ms, BUCKET_EDGES_MS[0], BUCKET_EDGES_MS[-1])
    counts_b, edges = np.histogram(clipped, bins=BUCKET_EDGES_MS)
    buckets = [(float(edges[i]), float(edges[i + 1]), int(c)) for i, c in enumerate(counts_b) if c]
    return Histogram(encoded.decode("ascii") if isinstance(encoded, bytes) else encoded, buckets)
