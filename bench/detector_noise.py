"""The regression detector's false-alarm and detection rates on noise (issue 14, point 8).

For each metric (qps: higher is better; p99_ms: lower is better) and each noise source:
- false alarms: 100 noise-only histories of 40 nights, each with one outlier night (a
  15-35% excursion either way, like the -31% of a host that slowed down); an alarm is any
  "regressed" or "improved" verdict on any night once the history has `min_history` nights.
  Goal: none.
- detection: 100 histories of 20 nights (one outlier night among them) followed by a step
  that makes the metric worse by 5%, 10% or 20%; detected when one of the three nights from
  the step on is "regressed". Goal for 10%: at least 95%.
Each night is judged exactly as the store judges it (embench.regression.judge with the
history's within-run noise as the scale floor), with the settings of config/benchmark.yaml.

Noise: `--from-db URL` resamples the night-to-night deviations (value / key median - 1) and
within-run intervals recorded in a results database (usable nights, one value per night as
the detector sees them; keys with at least 10 nights). Otherwise a stated synthetic model:
normal night-to-night deviations of sd 1%, 2% and 3% (`--noise`), each run's own standard
error half of that (what its within-run interval would report).

    .venv/bin/python bench/detector_noise.py [--from-db URL] [--noise 0.01,0.02,0.03]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embench.config import load_config
from embench.regression import DetectorSettings, judge
from embench.store.detect import settings_from_config

METRICS = {"qps": -1.0, "p99_ms": +1.0}  # the direction in which a step makes it worse
LEVELS = {"qps": 400.0, "p99_ms": 25.0}
STEPS = (0.05, 0.10, 0.20)
HISTORY = 40  # nights of a noise-only history
BEFORE_STEP = 20  # nights before a step
AFTER_STEP = 3  # nights judged from the step on
OUTLIER = (0.15, 0.35)  # the outlier night's relative excursion


@dataclass
class Noise:
    """Night-to-night deviations and the runs' own relative standard error, per metric."""

    name: str
    draw: Callable[[random.Random, str], tuple[float, float | None]]  # (deviation, noise)


def synthetic(sd: float) -> Noise:
    def draw(rng: random.Random, metric: str) -> tuple[float, float | None]:
        return rng.gauss(0.0, sd), sd / 2

    return Noise(f"synthetic: normal, night-to-night sd {sd:.0%}, within-run se {sd / 2:.1%}", draw)


def recorded(url: str, min_nights: int = 10) -> Noise:
    """Deviations from each comparability key's median, pooled per metric, resampled."""
    from embench.store.db import make_engine, session_scope
    from embench.store.detect import _nights, _select
    from embench.store.models import ScenarioRow

    pools: dict[str, list[tuple[float, float | None]]] = {m: [] for m in METRICS}
    keys = 0
    with session_scope(make_engine(url)) as session:
        all_keys = session.scalars(sa_distinct(ScenarioRow.comparability_key)).all()
        for key in all_keys:
            rows = session.execute(
                _select(list(METRICS))
                .where(ScenarioRow.comparability_key == key)
                .order_by(ScenarioRow.started_at)
            ).all()
            nights = [n for n in _nights(rows, list(METRICS)) if n.usable]
            if len(nights) < min_nights:
                continue
            keys += 1
            for metric in METRICS:
                points = [(n.value(metric), n.noise(metric)) for n in nights]
                values = [v for v, _ in points if v]
                if len(values) < min_nights:
                    continue
                median = statistics.median(values)
                pools[metric] += [(v / median - 1, s) for v, s in points if v]
    empty = [m for m, pool in pools.items() if not pool]
    if empty:
        raise SystemExit(
            f"{url}: no comparability key has {min_nights} usable nights of {', '.join(empty)}"
        )

    sizes = ", ".join(f"{m} {len(p)} nights" for m, p in pools.items())
    return resampled(f"recorded: {keys} comparability keys ({sizes}), resampled", pools)


def resampled(name: str, pools: dict[str, list[tuple[float, float | None]]]) -> Noise:
    """Noise drawn from recorded (deviation, within-run relative noise) pairs per metric."""

    def draw(rng: random.Random, metric: str) -> tuple[float, float | None]:
        return rng.choice(pools[metric])

    return Noise(name, draw)


def sa_distinct(column: object) -> object:
    import sqlalchemy as sa

    return sa.select(column).distinct()  # type: ignore[call-overload]


def history(
    rng: random.Random, noise: Noise, metric: str, nights: int, outlier_at: int
) -> tuple[list[float], list[float | None]]:
    values, noises = [], []
    for night in range(nights):
        deviation, own = noise.draw(rng, metric)
        if night == outlier_at:
            deviation += rng.choice((-1, 1)) * rng.uniform(*OUTLIER)
        values.append(LEVELS[metric] * (1 + deviation))
        noises.append(own)
    return values, noises


def verdicts(
    metric: str,
    values: list[float],
    noises: list[float | None],
    start: int,
    settings: DetectorSettings,
) -> list[str]:
    out = []
    for i in range(start, len(values)):
        baseline_noise = [n for n in noises[:i][-settings.lookback :] if n is not None]
        floor = statistics.median(baseline_noise) if baseline_noise else None
        out.append(judge(metric, values[i], values[:i], settings, noise=floor).status)
    return out


def false_alarms(noise: Noise, metric: str, settings: DetectorSettings, n: int, seed: int) -> int:
    alarms = 0
    for i in range(n):
        rng = random.Random(f"{seed}-fa-{metric}-{i}")
        values, noises = history(rng, noise, metric, HISTORY, rng.randrange(HISTORY))
        found = verdicts(metric, values, noises, settings.min_history, settings)
        alarms += any(v in ("regressed", "improved") for v in found)
    return alarms


def detections(
    noise: Noise, metric: str, step: float, settings: DetectorSettings, n: int, seed: int
) -> int:
    caught = 0
    for i in range(n):
        rng = random.Random(f"{seed}-step-{metric}-{step}-{i}")
        values, noises = history(
            rng, noise, metric, BEFORE_STEP + AFTER_STEP, rng.randrange(BEFORE_STEP)
        )
        for night in range(BEFORE_STEP, BEFORE_STEP + AFTER_STEP):
            values[night] *= 1 + METRICS[metric] * step
        caught += "regressed" in verdicts(metric, values, noises, BEFORE_STEP, settings)
    return caught


Rates = dict[str, tuple[int, list[int]]]  # metric -> (false alarms, caught per step)


def measure(noise: Noise, settings: DetectorSettings, n: int, seed: int) -> Rates:
    return {
        metric: (
            false_alarms(noise, metric, settings, n, seed),
            [detections(noise, metric, s, settings, n, seed) for s in STEPS],
        )
        for metric in METRICS
    }


def describe(settings: DetectorSettings, n: int) -> str:
    return (
        f"detector: confirm_z {settings.confirm_z} on 2 of the last {settings.confirm_nights} "
        f"nights, single-night z {settings.z_threshold}, min change "
        f"{settings.min_relative_change:.0%}, lookback {settings.lookback}, min history "
        f"{settings.min_history}, default floor {settings.noise_floor:.0%}\n"
        f"false alarms: {n} noise-only histories of {HISTORY} nights, one outlier night "
        f"({OUTLIER[0]:.0%}-{OUTLIER[1]:.0%} either way) each; detection: {n} histories of "
        f"{BEFORE_STEP} nights (one outlier) + a step, caught within {AFTER_STEP} nights"
    )


def print_rates(noise: Noise, rates: Rates, n: int) -> None:
    print(f"\nnoise {noise.name}")
    print(f"{'metric':<8} {'false alarms':>13}" + "".join(f" {f'{s:.0%} step':>9}" for s in STEPS))
    for metric, (alarms, caught) in rates.items():
        print(f"{metric:<8} {f'{alarms}/{n}':>13}" + "".join(f" {c / n:>9.0%}" for c in caught))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-db", help="results database URL to take the noise from")
    parser.add_argument("--noise", default="0.01,0.02,0.03", help="synthetic sd list")
    parser.add_argument("--histories", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-dir", type=Path, help="default: the repository's config/")
    args = parser.parse_args()

    settings = settings_from_config(load_config(args.config_dir).benchmark.regression)
    sources = (
        [recorded(args.from_db)]
        if args.from_db
        else [synthetic(float(sd)) for sd in args.noise.split(",")]
    )
    print(describe(settings, args.histories))
    for source in sources:
        print_rates(source, measure(source, settings, args.histories, args.seed), args.histories)
    print("\ngoals: no false alarm; a 10% step caught within three nights in >= 95%")


if __name__ == "__main__":
    main()
