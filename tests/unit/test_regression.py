"""The detector on synthetic histories: steps are caught, noise is not, direction matters."""

from __future__ import annotations

import random

import pytest

from embench.regression import DetectorSettings, Direction, judge, metric_direction

SETTINGS = DetectorSettings()  # the defaults benchmark.yaml ships


def noisy(rng: random.Random, level: float, cv: float, n: int) -> list[float]:
    return [rng.gauss(level, level * cv) for _ in range(n)]


def verdicts(metric: str, series: list[float], start: int) -> list[str]:
    return [
        judge(metric, series[i], series[:i], SETTINGS).status for i in range(start, len(series))
    ]


def test_a_clear_ten_percent_p99_step_is_a_regression_on_its_first_night():
    history = noisy(random.Random(1), 20.0, 0.01, 20)
    verdict = judge("p99_ms", 22.0, history, SETTINGS)
    assert verdict.status == "regressed", verdict
    assert verdict.relative_change == pytest.approx(0.10, abs=0.02)
    assert verdict.reason.startswith("+9.9% vs median 20.01 of 19 results")


def test_a_ten_percent_step_in_two_percent_noise_is_caught_within_three_nights():
    caught = 0
    for seed in range(100):
        rng = random.Random(seed)
        series = noisy(rng, 20.0, 0.02, 20) + noisy(rng, 22.0, 0.02, 3)
        caught += "regressed" in verdicts("p99_ms", series, 20)
    assert caught >= 85, f"caught {caught} of 100 steps"


def test_pure_noise_is_not_flagged_over_100_nights():
    flagged_series = 0
    for seed in range(100):
        rng = random.Random(seed)
        metric, level = ("qps", 800.0) if seed % 2 else ("p99_ms", 25.0)
        series = noisy(rng, level, 0.03 if seed % 3 else 0.02, 120)
        flagged_series += any(v != "unchanged" for v in verdicts(metric, series, 20))
    # 100 series x 100 nights = 10,000 verdicts on pure noise.
    assert flagged_series <= 3, f"{flagged_series} of 100 noise-only series raised an alert"


def test_a_qps_drop_is_a_regression_and_a_rise_an_improvement():
    history = noisy(random.Random(2), 1000.0, 0.01, 20)
    assert judge("qps", 880.0, history, SETTINGS).status == "regressed"
    assert judge("qps", 1120.0, history, SETTINGS).status == "improved"


def test_direction_is_respected_for_latency():
    history = noisy(random.Random(3), 20.0, 0.01, 20)
    assert judge("p99_ms", 17.6, history, SETTINGS).status == "improved"
    assert metric_direction("p99_ms") is Direction.LOWER_IS_BETTER
    assert metric_direction("texts_per_s") is Direction.HIGHER_IS_BETTER


def test_a_moderate_change_needs_the_previous_night_to_confirm_it():
    history = noisy(random.Random(6), 100.0, 0.02, 20)
    once = judge("p99_ms", 107.5, history, SETTINGS)
    assert once.status == "unchanged", once  # z about 3.5: not alone
    twice = judge("p99_ms", 107.5, [*history, 107.0], SETTINGS)
    assert twice.status == "regressed", twice
    assert "previous night" in twice.reason
    opposite = judge("p99_ms", 107.5, [*history, 93.0], SETTINGS)
    assert opposite.status == "unchanged"


def test_noise_wider_than_the_step_does_not_alert():
    history = noisy(random.Random(4), 100.0, 0.08, 20)
    assert judge("p99_ms", 110.0, history, SETTINGS).status == "unchanged"


def test_a_steady_history_does_not_alert_below_the_minimum_change():
    history = [10.0] * 20
    assert judge("p99_ms", 10.3, history, SETTINGS).status == "unchanged"  # 3% < 5%
    assert judge("p99_ms", 11.0, history, SETTINGS).status == "regressed"


def test_short_history_gives_no_baseline():
    verdict = judge("p99_ms", 50.0, [20.0, 21.0, 19.0, 20.0], SETTINGS)
    assert verdict.status == "no_baseline"
    assert verdict.baseline_median is None
    assert verdict.reason == "4 comparable results, 5 needed"


def test_only_the_lookback_window_counts():
    # An old regime (50 ms) followed by 21 nights at 20 ms: judged against 20 ms.
    history = [50.0] * 30 + noisy(random.Random(5), 20.0, 0.02, 21)
    verdict = judge("p99_ms", 20.5, history, SETTINGS)
    assert verdict.status == "unchanged" and verdict.history_size == 20
    assert verdict.baseline_median == pytest.approx(20.0, rel=0.03)
