"""Regression detection: is tonight's figure worse than the history of its comparability key?

A verdict needs both a robust z-score (distance from the history's median in units of its
median absolute deviation) and a minimum relative change: the z-score keeps a noisy metric
from alerting on noise, the relative change keeps a very steady metric from alerting on a
change too small to matter. Too little history gives "no baseline", never a guess.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Literal

# Consistency constant: MAD * 1.4826 estimates the standard deviation of normal data.
MAD_TO_SIGMA = 1.4826


class Direction(StrEnum):
    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"


def metric_direction(metric: str) -> Direction:
    """Throughputs are better higher; latencies, lags, CPU and memory are better lower."""
    higher = ("qps", "texts_per_s", "tokens_per_s", "throughput")
    return Direction.HIGHER_IS_BETTER if metric.startswith(higher) else Direction.LOWER_IS_BETTER


Status = Literal["improved", "unchanged", "regressed", "no_baseline"]


@dataclass(frozen=True)
class DetectorSettings:
    lookback: int = 20
    min_history: int = 5
    z_threshold: float = 5.0  # one night this far out is a verdict on its own
    confirm_z: float = 3.0  # ...or two nights in a row this far out, the same way
    min_relative_change: float = 0.05


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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _spread(window: list[float], median: float) -> float:
    """The larger of two estimates of the history's standard deviation: MAD (robust to an odd
    night) and the sample standard deviation (steadier on a short history, where MAD often
    comes out too small and would make ordinary noise look significant)."""
    mad = statistics.median(abs(h - median) for h in window)
    # A perfectly steady history has spread 0; a floor keeps the z-score finite.
    return max(MAD_TO_SIGMA * mad, statistics.stdev(window), 1e-3 * abs(median), 1e-12)


def judge(
    metric: str,
    value: float,
    history: list[float],
    settings: DetectorSettings,
    direction: Direction | None = None,
) -> Verdict:
    """Judge `value` against `history` (oldest first; only points of the same comparability
    key and the same baseline, i.e. since the environment or library versions last changed).

    One night is one sample, so a single-night rule must trade missed steps against false
    alarms. Two rules keep both rare: a change of `z_threshold` robust deviations is a verdict
    at once; a change of `confirm_z` counts when the previous night moved the same way too.
    Both compare against the baseline before the previous night."""
    direction = direction or metric_direction(metric)
    window = [h for h in history if math.isfinite(h)]
    if len(window) < settings.min_history:
        return Verdict(
            metric,
            "no_baseline",
            value,
            direction,
            len(window),
            reason=f"{len(window)} comparable results, {settings.min_history} needed",
        )
    previous = window[-1] if len(window) > settings.min_history else None
    baseline = (window[:-1] if previous is not None else window)[-settings.lookback :]
    median = statistics.median(baseline)
    sigma = _spread(baseline, median) * math.sqrt(1 + 1 / len(baseline))
    z = (value - median) / sigma
    relative = (value - median) / abs(median) if median else math.inf
    z_previous = (previous - median) / sigma if previous is not None else 0.0

    rule = ""
    if abs(relative) >= settings.min_relative_change:
        if abs(z) >= settings.z_threshold:
            rule = f"|z| >= {settings.z_threshold}"
        elif (
            abs(z) >= settings.confirm_z
            and z * z_previous > 0
            and (abs(z_previous) >= settings.confirm_z)
        ):
            rule = f"|z| >= {settings.confirm_z} on this and the previous night"
    worse = relative < 0 if direction is Direction.HIGHER_IS_BETTER else relative > 0
    status: Status = ("regressed" if worse else "improved") if rule else "unchanged"
    return Verdict(
        metric,
        status,
        value,
        direction,
        len(baseline),
        baseline_median=median,
        relative_change=relative,
        z_score=z,
        reason=(
            f"{relative:+.1%} vs median {median:.4g} of {len(baseline)} results, "
            f"robust z {z:+.1f} (previous night {z_previous:+.1f}); "
            + (
                f"{rule} and |change| >= {settings.min_relative_change:.0%}"
                if rule
                else "within noise"
            )
        ),
    )
