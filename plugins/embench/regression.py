"""Regression detection: is tonight's figure worse than the history of its comparability key?

One night is one sample: the median of that night's repetitions. A verdict needs three things:
- a robust scale: the median absolute deviation of the baseline nights (x1.4826), never below
  the noise the runs measured in themselves (their within-run confidence intervals) or, where
  no run recorded one, a small relative floor. No plain standard deviation: one bad-but-valid
  night in twenty must not widen the scale until a real step looks like noise;
- persistence: tonight and at least one of the `confirm_nights - 1` nights before it lie
  beyond `confirm_z` robust deviations the same way, so a single outlier night (a slow host)
  never decides alone (a single-night rule, `z_threshold`, is available but off by default);
- a minimum relative change, so a very steady metric does not alert on a change too small to
  matter.
The z thresholds are widened for the baseline's size where the MAD sets the scale: a MAD
from n nights is about as uncertain as a standard deviation from 0.37 n (its efficiency on
normal data), so the threshold is the Student-t quantile with the tail probability of the
normal one; a floor (measured or stated) is taken as known.

Too little history gives "no baseline", never a guess. Across a restart of the history (a
runtime, tokenizer or model-artifact change, or a baseline mark) `judge_upgrade` compares
the first nights after the change with the last nights before it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Literal

# Consistency constant: MAD * 1.4826 estimates the standard deviation of normal data.
MAD_TO_SIGMA = 1.4826
# Small-sample consistency factors of the MAD (Croux & Rousseeuw 1992): on few points the
# MAD comes out too small on average; n / (n - 0.8) above nine points.
_MAD_SMALL_SAMPLE = {2: 1.196, 3: 1.495, 4: 1.363, 5: 1.206, 6: 1.200, 7: 1.140, 8: 1.129, 9: 1.107}
# Asymptotic efficiency of the MAD on normal data: a MAD from n points carries the
# information of a standard deviation from 0.367 n points (2 * 0.367 n degrees of freedom).
MAD_EFFICIENCY = 0.367


class Direction(StrEnum):
    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"


# Throughputs: better higher. Everything else judged (latencies, lags, CPU, memory, spreads)
# is better lower.
_HIGHER_IS_BETTER = frozenset({"qps", "peak_qps", "peak_load", "qps_ci_low", "qps_ci_high"})


def metric_direction(metric: str) -> Direction:
    """Throughputs (qps, peak_qps, any *_per_s) are better higher; the rest lower."""
    higher = (
        metric in _HIGHER_IS_BETTER or metric.endswith("_per_s") or metric.startswith("throughput")
    )
    return Direction.HIGHER_IS_BETTER if higher else Direction.LOWER_IS_BETTER


Status = Literal["improved", "unchanged", "regressed", "no_baseline", "explained"]
Kind = Literal["night", "upgrade"]


@dataclass(frozen=True)
class DetectorSettings:
    lookback: int = 20  # baseline nights at most
    min_history: int = 5  # fewer baseline nights -> "no baseline"
    z_threshold: float | None = None  # one night this far out decides alone (None: never)
    confirm_z: float = 3.0  # tonight and another recent night this far out, the same way...
    confirm_nights: int = 3  # ...among the last `confirm_nights` nights (tonight included)
    min_relative_change: float = 0.05
    noise_floor: float = 0.01  # relative scale floor where no run recorded its own interval
    upgrade_nights: int = 3  # nights after a restart that also get an upgrade verdict
    host_slow_threshold: float = 0.05  # host probe this much below its history: "slow host"
    host_min_history: int = 3  # earlier probes of the hardware needed to judge the host

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    metric: str
    status: Status
    value: float
    direction: Direction
    history_size: int
    baseline_median: float | None = None
    relative_change: float | None = None  # (value - median) / |median|
    z_score: float | None = None
    reason: str = ""
    kind: Kind = "night"
    scale: float | None = None  # the robust scale used (metric units)
    threshold: float | None = None  # the widened z threshold used
    adjusted_value: float | None = None  # "explained": the value corrected for host speed
    host_ratio: float | None = None  # host speed / its history (< 1: slower)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Scale:
    median: float
    sigma: float  # the larger of the MAD's estimate and the floor
    source: str  # what set the scale: "MAD", "within-run noise" or "default floor"
    mad_sigma: float  # the MAD's estimate alone

    def threshold(self, z: float, n: int) -> float:
        """The z threshold on this scale: the MAD's part of the scale is uncertain (widened
        for `n` nights), the floor's is not (a measured, or stated, noise). A deviation must
        pass both: z floors and widened(z, n) MADs."""
        return max(z, widened(z, n) * self.mad_sigma / self.sigma)


def robust_scale(values: list[float], noise: float | None, fallback: float) -> Scale:
    """Median and scale of `values`: 1.4826 * MAD (corrected for small samples), floored by
    `noise` (the runs' own relative within-run standard error) or, without one, by the
    relative `fallback`. A night's figure
    cannot be steadier from night to night than its own sampling error, so the floor keeps a
    short or quantized history (MAD 0) from making ordinary noise look significant."""
    median = statistics.median(values)
    n = len(values)
    small_sample = _MAD_SMALL_SAMPLE.get(n, n / (n - 0.8) if n > 9 else 1.0)
    mad = statistics.median(abs(v - median) for v in values)
    mad_sigma = MAD_TO_SIGMA * small_sample * mad
    relative = noise if noise is not None and noise > 0 else fallback
    floor = relative * abs(median)
    if mad_sigma >= floor:
        return Scale(median, max(mad_sigma, 1e-12), "MAD", mad_sigma)
    source = "within-run noise" if noise is not None and noise > 0 else "default floor"
    return Scale(median, max(floor, 1e-12), f"{source} {relative:.1%}", mad_sigma)


def widened(z: float, n: int) -> float:
    """The z threshold widened for a scale estimated by MAD from `n` nights: the Student-t
    quantile with 2 * 0.367 n degrees of freedom and the same one-sided tail as `z` under the
    normal (Cornish-Fisher expansion, Abramowitz & Stegun 26.7.5; within 1% for >= 3 degrees
    of freedom, slightly conservative below)."""
    nu = max(2 * MAD_EFFICIENCY * n, 1.0)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / nu + g2 / nu**2 + g3 / nu**3 + g4 / nu**4


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _relative(value: float, median: float) -> float:
    return (value - median) / abs(median) if median else math.inf


def _status(relative: float, direction: Direction, decided: bool) -> Status:
    if not decided:
        return "unchanged"
    worse = relative < 0 if direction is Direction.HIGHER_IS_BETTER else relative > 0
    return "regressed" if worse else "improved"


def judge(
    metric: str,
    value: float,
    history: list[float],
    settings: DetectorSettings,
    direction: Direction | None = None,
    noise: float | None = None,
) -> Verdict:
    """Judge tonight's `value` against `history`: one value per earlier night of the same
    comparability key and baseline, oldest first (median of each night's repetitions; nights
    that were invalid or unstable already left out). `noise` is the runs' own relative
    within-run standard error (median over the baseline nights), None if none recorded one.

    The last `confirm_nights - 1` nights are the confirming nights, judged with tonight
    against the baseline before them, so a step does not hide in its own baseline."""
    direction = direction or metric_direction(metric)
    window = _finite(history)
    if len(window) < settings.min_history:
        return Verdict(
            metric,
            "no_baseline",
            value,
            direction,
            len(window),
            reason=f"{len(window)} comparable nights, {settings.min_history} needed",
        )
    confirming = max(0, min(settings.confirm_nights - 1, len(window) - settings.min_history))
    recent = window[len(window) - confirming :]
    baseline = window[: len(window) - confirming][-settings.lookback :]
    scale = robust_scale(baseline, noise, settings.noise_floor)
    median = scale.median
    # prediction of one new night: the baseline median is itself uncertain
    sigma = scale.sigma * math.sqrt(1 + 1 / len(baseline))
    threshold = scale.threshold(settings.confirm_z, len(baseline))
    z = (value - median) / sigma
    relative = _relative(value, median)
    z_recent = [(r - median) / sigma for r in recent]
    # a confirming night must itself be a change that matters: beyond the threshold and the
    # minimum relative change, the same way as tonight
    confirmed = [
        r
        for r, zr in zip(recent, z_recent, strict=True)
        if zr * z > 0
        and abs(zr) >= threshold
        and abs(_relative(r, median)) >= settings.min_relative_change
    ]

    rule = ""
    if abs(relative) >= settings.min_relative_change:
        single = (
            scale.threshold(settings.z_threshold, len(baseline))
            if settings.z_threshold is not None
            else None
        )
        if single is not None and abs(z) >= single:
            rule = f"|z| >= {single:.2f} on one night"
        elif abs(z) >= threshold and confirmed:
            rule = (
                f"|z| >= {threshold:.2f} tonight and on {len(confirmed)} of the "
                f"{len(recent)} night(s) before, the same way"
            )
    if rule:
        verdict_text = f"{rule}, and |change| >= {settings.min_relative_change:.0%}"
    elif abs(z) >= threshold and abs(relative) >= settings.min_relative_change:
        verdict_text = (
            f"one night beyond |z| {threshold:.2f}: not confirmed by the "
            f"{len(recent)} night(s) before (a second night decides)"
        )
    else:
        verdict_text = "within noise"
    previous = ", ".join(f"{zr:+.1f}" for zr in z_recent) or "none"
    return Verdict(
        metric,
        _status(relative, direction, bool(rule)),
        value,
        direction,
        len(baseline),
        baseline_median=median,
        relative_change=relative,
        z_score=z,
        reason=(
            f"{relative:+.1%} vs median {median:.4g} of {len(baseline)} nights, "
            f"robust z {z:+.1f} (scale {scale.sigma:.3g}: {scale.source}; "
            f"previous nights {previous}); {verdict_text}"
        ),
        scale=scale.sigma,
        threshold=threshold,
    )


def judge_upgrade(
    metric: str,
    after: list[float],
    before: list[float],
    settings: DetectorSettings,
    change: str,
    direction: Direction | None = None,
    noise: float | None = None,
) -> Verdict:
    """The upgrade verdict: the first nights after a restart of the history (`after`, oldest
    first, tonight last) against the last `lookback` nights before it (`before`). `change`
    names what changed ("onnxruntime 1.22.0 -> 1.23.0"). The medians are compared on the
    scale of the nights before; the evidence grows with each night after, so the verdict is
    given again on each of the first `upgrade_nights` nights."""
    direction = direction or metric_direction(metric)
    after = _finite(after)
    baseline = _finite(before)[-settings.lookback :]
    value = statistics.median(after)
    if len(baseline) < settings.min_history:
        return Verdict(
            metric,
            "no_baseline",
            value,
            direction,
            len(baseline),
            kind="upgrade",
            reason=(
                f"{change}: {len(baseline)} comparable nights before the change, "
                f"{settings.min_history} needed"
            ),
        )
    scale = robust_scale(baseline, noise, settings.noise_floor)
    median = scale.median
    sigma = scale.sigma * math.sqrt(1 / len(after) + 1 / len(baseline))
    threshold = scale.threshold(settings.confirm_z, len(baseline))
    z = (value - median) / sigma
    relative = _relative(value, median)
    decided = abs(relative) >= settings.min_relative_change and abs(z) >= threshold
    status = _status(relative, direction, decided)
    nights = f"{len(after)} night{'s' if len(after) > 1 else ''}"
    return Verdict(
        metric,
        status,
        value,
        direction,
        len(baseline),
        baseline_median=median,
        relative_change=relative,
        z_score=z,
        kind="upgrade",
        reason=(
            f"{change}: {metric} {relative:+.1%} (median {value:.4g} of {nights} after vs "
            f"{median:.4g} of {len(baseline)} before), robust z {z:+.1f} "
            f"(scale {scale.sigma:.3g}: {scale.source}); "
            + (
                f"{status}: |z| >= {threshold:.2f} and "
                f"|change| >= {settings.min_relative_change:.0%}"
                if decided
                else "within noise"
            )
        ),
        scale=scale.sigma,
        threshold=threshold,
    )


def host_adjusted(metric: str, value: float, ratio: float) -> float | None:
    """`value` as it would have been on a host at its usual speed, given `ratio` = this
    night's host speed over its history (< 1: slower): throughputs divided by the ratio,
    latencies multiplied by it. None for metrics host speed does not scale (CPU, memory)."""
    if ratio <= 0:
        return None
    if metric_direction(metric) is Direction.HIGHER_IS_BETTER:
        return value / ratio
    if metric.endswith("_ms"):
        return value * ratio
    return None


def explain(verdict: Verdict, adjusted: Verdict, ratio: float, probe: str) -> Verdict:
    """A regression the host's slowness accounts for: when the value corrected for the
    host's speed (`adjusted`, judged the same way) is not a regression, the verdict becomes
    "explained", naming both numbers; else the regression stands, with the correction noted."""
    shown = f"{verdict.value:.4g} measured, {adjusted.value:.4g} at the host's usual speed"
    host = f"host probe {ratio:.2f}x its history ({probe})"
    if adjusted.status == "regressed":
        return Verdict(
            **{
                **asdict(verdict),
                "reason": f"{verdict.reason}; {host}: still regressed when adjusted ({shown})",
                "adjusted_value": adjusted.value,
                "host_ratio": ratio,
            }
        )
    return Verdict(
        **{
            **asdict(verdict),
            "status": "explained",
            "reason": (
                f"{host} explains it: {shown}, "
                f"{adjusted.relative_change or 0.0:+.1%} adjusted is within noise; "
                f"unadjusted: {verdict.reason}"
            ),
            "adjusted_value": adjusted.value,
            "host_ratio": ratio,
        }
    )
