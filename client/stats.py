"""Statistics: exact percentiles with distribution-free intervals, windows, stability, histograms.

Percentiles are exact, computed from every measured latency with the nearest-rank definition
(numpy's `inverted_cdf`, the definition HdrHistogram uses): p99 is the smallest latency that
at least 99% of the requests did not exceed. Their confidence intervals come from order
statistics: the number of sample values below the true q-quantile is Binomial(n, q) whatever
the latency distribution, so a pair of ranks (l, u) with P(l <= B < u) >= confidence brackets
it exactly - no normality, no bootstrap, numpy and math only (the client image has no scipy).
That assumes independent requests; where they come in clusters (a batching server, a queue)
the ranks are those of the effective sample, n over the measured design effect. When the
sample is too small for such a pair, the percentile is not reported at all: a p99.9 of 500
requests would be the maximum under another name.

The HDR histogram kept in the result (for merging runs and plotting) is built from the same
values after the run, so the hot path only appends to lists.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES: dict[str, float] = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p999": 99.9}
CONFIDENCE = 0.95
HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000  # one hour
HDR_SIGNIFICANT_FIGURES = 3
# Plain histogram buckets: 20 per decade from 10 us to 1000 s (log-spaced edges, in ms).
BUCKET_EDGES_MS: np.ndarray = np.logspace(-2, 6, 8 * 20 + 1)
# Two-sided 97.5% quantiles of Student's t by degrees of freedom (for 95% intervals of a mean
# over a handful of windows); beyond the table the normal quantile is within 2%.
T_975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
    25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000,
    120: 1.980,
}  # fmt: skip
Z_975 = 1.960


def nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """The smallest value that at least q% of the values do not exceed (q in (0, 100])."""
    n = sorted_values.size
    # the epsilon keeps 99.9% of 1000 at rank 999 despite binary floating point
    rank = min(n, max(1, math.ceil(q / 100.0 * n - 1e-9)))
    return float(sorted_values[rank - 1])


def percentile(values: np.ndarray, q: float) -> float:
    return nearest_rank(np.sort(np.asarray(values, dtype=np.float64)), q)


# ------------------------------------------------------------------ order-statistic intervals


def _binomial_cdf(n: int, p: float) -> tuple[int, np.ndarray]:
    """CDF of Binomial(n, p) at k = lo, lo+1, ..., hi, as (lo, values). The range spans the
    mean +- 12 standard deviations (and 20 counts more), outside which the mass is below
    1e-30: exact to floating point. The pmf comes from its ratio recurrence in log space."""
    mean = n * p
    span = 12.0 * math.sqrt(n * p * (1.0 - p)) + 20.0
    lo = max(0, math.floor(mean - span))
    hi = min(n, math.ceil(mean + span))
    log_first = (
        math.lgamma(n + 1)
        - math.lgamma(lo + 1)
        - math.lgamma(n - lo + 1)
        + lo * math.log(p)
        + (n - lo) * math.log1p(-p)
    )
    k = np.arange(lo, hi, dtype=np.float64)
    steps = np.log(n - k) - np.log(k + 1.0) + (math.log(p) - math.log1p(-p))
    log_pmf = log_first + np.concatenate(([0.0], np.cumsum(steps)))
    return lo, np.cumsum(np.exp(log_pmf))


@lru_cache(maxsize=4096)
def order_statistic_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """1-based ranks (l, u) such that [x_(l), x_(u)] holds the q-quantile (q in (0, 1)) with
    probability >= confidence, each tail <= (1 - confidence) / 2; 0 for l, or n + 1 for u,
    where the sample is too small for that bound. With B ~ Binomial(n, q) the count of values
    below the quantile, P(x_(l) <= quantile <= x_(u)) >= P(l <= B <= u - 1)."""
    if n <= 0:
        return 0, n + 1
    tail = (1.0 - confidence) / 2.0
    lo, cdf = _binomial_cdf(n, q)
    # l - 1 = the largest k with F(k) <= tail (F(k) is ~0 below lo)
    below = int(np.searchsorted(cdf, tail * (1 + 1e-12), side="right"))
    lower = lo + below  # = (that k) + 1
    if lower > n:
        lower = n
    # u - 1 = the smallest k with F(k) >= 1 - tail
    at = int(np.searchsorted(cdf, (1.0 - tail) * (1 - 1e-12), side="left"))
    upper = lo + at + 1
    return lower, min(upper, n + 1)


def required_count(q: float, confidence: float = CONFIDENCE) -> int:
    """The smallest sample size with both bounds of the q-quantile's interval inside the
    sample: (1 - q)^n <= tail and q^n <= tail."""
    tail = (1.0 - confidence) / 2.0
    need = max(math.log(tail) / math.log(q), math.log(tail) / math.log1p(-q))
    n = max(1, math.ceil(need - 1e-9))
    while (
        order_statistic_ranks(n, q, confidence)[1] > n
        or order_statistic_ranks(n, q, confidence)[0] < 1
    ):
        n += 1
    return n


# requests that bound p99 at CONFIDENCE: the figures of a stable measurement should hold them
P99_SUPPORT = required_count(0.99, CONFIDENCE)


@dataclass(frozen=True)
class Percentile:
    """A percentile with its distribution-free interval, or None with why."""

    value: float | None
    low: float | None
    high: float | None
    note: str | None


def percentile_with_interval(
    sorted_values: np.ndarray, q: float, confidence: float = CONFIDENCE, design_effect: float = 1.0
) -> Percentile:
    """q in percent. None (with a note) when the sample cannot bound it on both sides. With a
    design effect d > 1 (requests that share one fate: a batch, a queue; see
    tail_design_effect) the ranks are those of the effective sample n / d, each effective
    rank standing for a group of d requests, and the interval spans whole groups - wider,
    as clustered requests tell less - clamped to the sample."""
    n = int(sorted_values.size)
    if n == 0:
        return Percentile(None, None, None, None)
    lower, upper = order_statistic_ranks(n, q / 100.0, confidence)
    if lower < 1 or upper > n:
        need = required_count(q / 100.0, confidence)
        return Percentile(
            None,
            None,
            None,
            f"needs at least {need} requests for a {confidence:.0%} interval; {n} measured",
        )
    if design_effect > 1.0:
        n_eff = max(1, round(n / design_effect))
        group = n / n_eff
        lo_eff, hi_eff = order_statistic_ranks(n_eff, q / 100.0, confidence)
        lower = min(lower, max(1, math.floor((lo_eff - 1) * group) + 1))
        upper = max(upper, min(n, math.ceil(hi_eff * group - 1e-9)))
    return Percentile(
        nearest_rank(sorted_values, q),
        float(sorted_values[lower - 1]),
        float(sorted_values[upper - 1]),
        None,
    )


def percentiles_with_intervals(
    values: np.ndarray, confidence: float = CONFIDENCE, design_effect: float = 1.0
) -> dict[str, Percentile]:
    v = np.asarray(values, dtype=np.float64)
    v = np.sort(v[~np.isnan(v)])
    return {
        k: percentile_with_interval(v, q, confidence, design_effect) for k, q in PERCENTILES.items()
    }


def with_window_spread(
    pct: dict[str, Percentile],
    start_s: np.ndarray,
    latency_ms: np.ndarray,
    edges_s: list[float],
) -> dict[str, Percentile]:
    """Each percentile's interval widened to hold the batch-means interval of the same
    percentile over the windows (requests by start time, `edges_s` the windows' bounds).
    The order-statistic interval holds for a sample from one distribution; a host that
    drifts within the run moves the windows apart, and only they show it. A percentile a
    window is too small for (fewer requests than its tail needs) keeps its own interval."""
    if len(edges_s) < 4:  # three windows at least
        return pct
    out = dict(pct)
    batches = [
        np.sort(latency_ms[(start_s >= lo) & (start_s < hi)])
        for lo, hi in itertools.pairwise(edges_s)
    ]
    for key, q in PERCENTILES.items():
        current = pct[key]
        if current.value is None or current.low is None or current.high is None:
            continue
        if any(b.size < 100 / (100 - q) for b in batches):
            continue
        spread = mean_interval([nearest_rank(b, q) for b in batches])
        if spread is not None:
            low, high = min(current.low, spread[0]), max(current.high, spread[1])
            out[key] = replace(current, low=max(low, 0.0), high=high)
    return out


def mean_interval(values: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean of `values` (batch means over windows: each window
    is one observation, so the interval holds however the requests inside one correlate)."""
    m = len(values)
    if m < 2:
        return None
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1))
    df = m - 1
    t = T_975.get(df) or next((T_975[k] for k in sorted(T_975) if k >= df), Z_975)
    half = t * sd / math.sqrt(m)
    return mean - half, mean + half


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


# ------------------------------------------------------------------ windows and stability


@dataclass(frozen=True)
class Window:
    index: int
    start_s: float  # from the start of the measurement
    end_s: float
    requests: int  # completions in the window, failures included
    requests_ok: int
    errors: int
    qps: float  # successful completions per second
    arrivals: int | None  # open loop: arrivals scheduled in the window
    # what stability compares: qps (closed loop), or successful completions per scheduled
    # arrival (open loop, where qps follows the random arrivals, not the server)
    throughput: float | None
    p50_ms: float | None  # over every completion in the window, failures at their time
    p99_ms: float | None
    # the range that the window's p99 takes by sampling alone: order statistics around it
    # at CONFIDENCE, clamped to the window's own values when it is small
    p99_low_ms: float | None
    p99_high_ms: float | None
    p50_low_ms: float | None
    p50_high_ms: float | None
    partial: bool
    # mean requests in flight over the window (Little's law: summed latency / length)
    inflight: float = 0.0


def window_length(
    window_s: float,
    window_requests: int,
    throughput_per_s: float | None,
    windows: int,
    max_duration_s: float,
) -> tuple[float, str | None]:
    """The window length: at least window_s, and long enough to hold window_requests at the
    expected throughput; capped so that `windows` of them fit in max_duration_s (a note then
    says that they hold fewer requests than wanted)."""
    length = window_s
    if throughput_per_s and throughput_per_s > 0:
        length = max(length, window_requests / throughput_per_s)
    length = math.ceil(length * 100 - 1e-6) / 100  # whole hundredths: readable lengths
    cap = max_duration_s / windows
    if length > cap:
        held = f"about {cap * throughput_per_s:.0f}" if throughput_per_s else "fewer"
        return cap, (
            f"windows capped at {cap:.2f} s so that {windows} fit in max_duration_s: they hold "
            f"{held} requests of the {window_requests} wanted"
        )
    return length, None


def tail_design_effect(start_s: np.ndarray, latency_ms: np.ndarray) -> float:
    """How many requests in a row, by start time, share the fate of one slow moment: the
    variance inflation 1 + 2 * sum(autocorrelation) of the indicator "slower than the p90",
    summed up to its first non-positive lag and at most over twice the mean number of
    requests in flight (Little's law: requests that overlap at the server share its state -
    a batch, a pause, a queue; a longer reach would take a drift of the level for
    clustering, and hide the very change that stability looks for). 1 for independent
    latencies; about the batch size when a server batches; a few in open loop, where a slow
    request delays the ones queued behind it. A window of n requests then holds about
    n / design_effect independent looks at its tail."""
    n = int(latency_ms.size)
    if n < 50:
        return 1.0
    order = np.argsort(start_s, kind="stable")
    start, lat = start_s[order], latency_ms[order]
    span = float(start[-1] - start[0]) + float(lat[-1]) / 1e3
    inflight = float(lat.sum()) / 1e3 / span if span > 0 else 1.0
    max_lag = min(max(2, math.ceil(2 * inflight)), n // 4)
    x = (lat > nearest_rank(np.sort(lat), 90)).astype(np.float64)
    x -= x.mean()
    var = float(np.dot(x, x))
    if var <= 0:
        return 1.0
    total = 0.0
    for k in range(1, max_lag + 1):
        r = float(np.dot(x[:-k], x[k:])) / var
        if r <= 0:
            break
        total += r
    return 1.0 + 2.0 * total


def _band(
    sorted_lat: np.ndarray, q: float, design_effect: float, confidence: float
) -> tuple[float, float]:
    """The order-statistic ranks around the q-quantile of the window's effective sample (n
    divided by the design effect), mapped back onto the window's own values: effective rank l
    stands for the l-th group of requests that share one fate, so the band starts below the
    whole group (at the end of group l - 1). Clamped to the window's values when it is too
    small for an upper bound: the band then ends at its maximum (where a small window's p99
    lies)."""
    n = sorted_lat.size
    n_eff = max(1, round(n / max(1.0, design_effect)))
    lower, upper = order_statistic_ranks(n_eff, q, confidence)
    group = n / n_eff
    low_rank = max(1, math.floor((max(lower, 1) - 1) * group + 1e-9))
    high_rank = min(n, math.ceil(min(upper, n_eff) * group - 1e-9))
    return float(sorted_lat[low_rank - 1]), float(sorted_lat[high_rank - 1])


def windows(
    end_s: np.ndarray,
    latency_ms: np.ndarray,
    ok: np.ndarray,
    duration_s: float,
    window_s: float,
    arrivals_s: np.ndarray | None = None,
    design_effect: float = 1.0,
    confidence: float = CONFIDENCE,
) -> list[Window]:
    """Per-window throughput and latency. A request belongs to the window in which it
    completed (end_s: completion time from the measurement start), so that every latency of a
    window is known when it closes; QPS is the successful completions over the window's
    length. `arrivals_s` (open loop): the scheduled arrival times, from the same origin. Only
    the last window can be partial."""
    out: list[Window] = []
    n_full = math.floor(duration_s / window_s + 1e-9)
    bounds = [(i * window_s, (i + 1) * window_s, False) for i in range(n_full)]
    if duration_s - n_full * window_s > 1e-6:
        bounds.append((n_full * window_s, duration_s, True))
    order = np.argsort(end_s, kind="stable")
    end_sorted = end_s[order]
    lat_sorted_by_end = latency_ms[order]
    ok_sorted = ok[order]
    arr = np.sort(arrivals_s) if arrivals_s is not None else None
    for i, (lo, hi, partial) in enumerate(bounds):
        a, b = np.searchsorted(end_sorted, [lo, hi], side="left")
        lat = np.sort(lat_sorted_by_end[a:b])
        n_ok = int(ok_sorted[a:b].sum())
        n = int(b - a)
        arrivals = None
        if arr is not None:
            x, y = np.searchsorted(arr, [lo, hi], side="left")
            arrivals = int(y - x)
        qps = n_ok / (hi - lo)
        if arrivals is None:
            throughput: float | None = qps
        else:
            throughput = n_ok / arrivals if arrivals else None
        inflight = float(lat.sum()) / 1e3 / (hi - lo)
        band = _band(lat, 0.99, design_effect, confidence) if n else (None, None)
        mid = _band(lat, 0.50, design_effect, confidence) if n else (None, None)
        out.append(
            Window(
                index=i,
                start_s=lo,
                end_s=hi,
                requests=n,
                requests_ok=n_ok,
                errors=n - n_ok,
                qps=qps,
                arrivals=arrivals,
                throughput=throughput,
                p50_ms=nearest_rank(lat, 50) if n else None,
                p99_ms=nearest_rank(lat, 99) if n else None,
                p99_low_ms=band[0],
                p99_high_ms=band[1],
                p50_low_ms=mid[0],
                p50_high_ms=mid[1],
                partial=partial,
                inflight=inflight,
            )
        )
    return out


@dataclass(frozen=True)
class Stability:
    stable: bool
    reason: str
    qps_spread: float | None  # max/min - 1 of the compared throughput, over the checked windows
    p99_spread: float | None  # max/min - 1 of p99, over the checked windows
    first: int | None = None  # the first window of the stable run (the figures start there)
    count: int = 0  # windows in the stable run; 0 when unstable


@dataclass(frozen=True)
class Agreement:
    throughput_spread: float  # max/min - 1 of the point values
    p99_spread: float
    p50_spread: float
    # the same comparison between ranges, max(low) / min(high) - 1, floored at 0: how far
    # apart the windows are beyond what their edges (throughput) or their sampling
    # (percentiles) alone explain
    throughput_excess: float
    p99_excess: float
    p50_excess: float

    def within(self, tolerance: float) -> bool:
        return max(self.throughput_excess, self.p99_excess, self.p50_excess) <= tolerance

    def problems(self, tolerance: float, what: str) -> list[str]:
        out = []
        if self.throughput_excess > tolerance:
            out.append(
                f"{what} differs by {self.throughput_spread:.1%} ({self.throughput_excess:.1%} "
                "beyond the requests in flight at the window edges)"
            )
        for name, spread, excess in (
            ("p99", self.p99_spread, self.p99_excess),
            ("p50", self.p50_spread, self.p50_excess),
        ):
            if excess > tolerance:
                out.append(
                    f"{name} differs by {spread:.1%} ({excess:.1%} beyond its sampling range)"
                )
        return out


def _excess(lows: list[float], highs: list[float]) -> float:
    return max(max(lows) / min(highs) - 1, 0.0)


def _floats(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def agreement(ws: list[Window]) -> Agreement | None:
    """How far a set of windows disagree (None: a window has no success, arrival or latency).
    Each figure is compared as a range: a window's p99 is one of its few slowest requests and
    its p50 one of many, so their ranges are the order statistics around them (of the
    window's effective sample); a window's completion count depends on which side of its
    edges the requests in flight there fall, so its range is +- the requests in flight. Only
    a difference beyond those ranges is the server's. p50 is compared beside p99 because a
    slowdown moves it reliably while a small window's p99 is nearly its maximum."""
    if any(w.throughput is None or w.throughput <= 0 or w.requests_ok <= 0 for w in ws):
        return None
    p99 = _floats([w.p99_ms for w in ws])
    p50 = _floats([w.p50_ms for w in ws])
    if len(p99) < len(ws) or min(p99) <= 0 or min(p50) <= 0:
        return None
    thr = _floats([w.throughput for w in ws])
    resolution = [w.inflight / w.requests_ok for w in ws]
    return Agreement(
        throughput_spread=max(thr) / min(thr) - 1,
        p99_spread=max(p99) / min(p99) - 1,
        p50_spread=max(p50) / min(p50) - 1,
        throughput_excess=_excess(
            [t * max(1 - r, 0.0) for t, r in zip(thr, resolution, strict=True)],
            [t * (1 + r) for t, r in zip(thr, resolution, strict=True)],
        ),
        p99_excess=_excess(
            _floats([w.p99_low_ms for w in ws]), _floats([w.p99_high_ms for w in ws])
        ),
        p50_excess=_excess(
            _floats([w.p50_low_ms for w in ws]), _floats([w.p50_high_ms for w in ws])
        ),
    )


def _backlog_growth(ws: list[Window]) -> float:
    """Open loop: how much the requests in flight grew from the first window to the last, as
    a share of a window's arrivals. A server that does not keep up queues the difference, so
    its windows can agree with each other (the same completed/arrived share, latencies that
    all lie in a long queue) while no steady state exists."""
    per_window = sum(w.arrivals or 0 for w in ws) / len(ws)
    return (ws[-1].inflight - ws[0].inflight) / per_window if per_window > 0 else 0.0


def stability(series: list[Window], n: int, tolerance: float) -> Stability:
    """perf_analyzer's rule: stable when the last `n` full windows agree within `tolerance`
    (max/min - 1) on throughput (open loop: completions per scheduled arrival, since the raw
    QPS of a window follows its random arrivals), on p99 and on p50, each beyond what the
    window's edges or sampling alone explain (see `agreement`). The stable run then reaches
    back over every earlier window that agrees with those `n` within the tolerance, up to the
    first that does not (a transient start, a slowdown): the figures cover that run. In open
    loop a growing backlog is never stable, however alike its windows look."""
    full = [w for w in series if not w.partial]
    open_loop = any(w.arrivals is not None for w in full)
    what = "completed/arrived" if open_loop else "QPS"
    if len(full) < n:
        return Stability(False, f"only {len(full)} full window(s), {n} needed", None, None)
    last = full[-n:]
    agree = agreement(last)
    if agree is None:
        return Stability(
            False, f"one of the last {n} windows has no successful request", None, None
        )
    length = last[0].end_s - last[0].start_s
    if not agree.within(tolerance):
        problems = agree.problems(tolerance, what)
        return Stability(
            False,
            f"the last {n} windows of {length:g} s disagree: {'; '.join(problems)} "
            f"(tolerance {tolerance:.0%})",
            agree.throughput_spread,
            agree.p99_spread,
        )
    if open_loop and (growth := _backlog_growth(last)) > tolerance:
        return Stability(
            False,
            f"the backlog grows: {last[0].inflight:.0f} -> {last[-1].inflight:.0f} requests "
            f"in flight over the last {n} windows ({growth:.0%} of a window's arrivals, "
            f"tolerance {tolerance:.0%}): the server does not keep up with the arrivals",
            agree.throughput_spread,
            agree.p99_spread,
        )
    first = len(full) - n
    while first > 0:
        joined = agreement([full[first - 1], *last])
        if joined is None or not joined.within(tolerance):
            break
        first -= 1
    count = len(full) - first
    noise = (
        f" (p99's {agree.p99_spread:.1%} is within its sampling range)"
        if agree.p99_spread > tolerance
        else ""
    )
    start = full[first].start_s
    return Stability(
        True,
        f"the last {n} windows of {length:g} s agree within {tolerance:.0%}: {what} "
        f"{agree.throughput_spread:.1%}, p99 {agree.p99_spread:.1%}{noise}; figures over "
        f"{count} windows from {start:g} s",
        agree.throughput_spread,
        agree.p99_spread,
        full[first].index,
        count,
    )


# ------------------------------------------------------------------ histogram


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
