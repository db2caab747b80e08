"""The A/B comparison's judgement and its params, without a host: the ratio over interleaved
slice pairs, its interval, and the verdict at the stated precision."""

from __future__ import annotations

import math

import pytest

from embench.ab import ab_targets, compare, judge, parse_ab, provisioning_params
from embench.config import load_config
from embench.errors import ConfigError

CONFIG = load_config()
MODEL = "all-minilm-l6-v2"


def pairs(baseline: list[float], candidate: list[float]) -> dict:
    return {
        "model": MODEL,
        "baseline": "onnx/fp32",
        "candidate": "onnx/int8",
        "slices": [
            {
                "baseline": {"qps": b, "p50_ms": 1000 / b},
                "candidate": {"qps": c, "p50_ms": 1000 / c},
            }
            for b, c in zip(baseline, candidate, strict=True)
        ],
    }


def by_metric(verdicts: list[dict]) -> dict[str, dict]:
    return {v["metric"]: v for v in verdicts}


def test_a_clearly_faster_candidate_is_faster_in_throughput_and_latency():
    found = by_metric(compare(pairs([200, 190, 210, 205], [300, 290, 305, 310]), 0.05))
    assert found["qps"]["verdict"] == "faster"
    # the geometric mean of 300/200, 290/190, 305/210 and 310/205
    assert found["qps"]["ratio"] == pytest.approx(1.4975, abs=1e-4)
    assert found["qps"]["low"] > 1.4 and found["qps"]["high"] < 1.6
    assert found["p50_ms"]["verdict"] == "faster"  # lower latency is better
    assert found["p50_ms"]["ratio"] == pytest.approx(1 / 1.4975, abs=1e-4)
    assert found["p99_ms"]["verdict"] == "not measured"  # no p99 in these slices


def test_a_slower_candidate_is_slower():
    found = by_metric(compare(pairs([300, 290, 305, 310], [200, 190, 210, 205]), 0.05))
    assert found["qps"]["verdict"] == "slower"
    assert found["p50_ms"]["verdict"] == "slower"


def test_the_same_server_against_itself_is_no_difference_at_the_precision():
    baseline = [200.0, 180.0, 220.0, 205.0, 190.0, 210.0]
    candidate = [b * f for b, f in zip(baseline, [1.01, 0.99, 1.0, 1.02, 0.98, 1.0], strict=True)]
    found = by_metric(compare(pairs(baseline, candidate), 0.05))
    assert found["qps"]["verdict"] == "no difference"
    assert 1 / 1.05 <= found["qps"]["low"] <= found["qps"]["high"] <= 1.05


def test_a_small_but_certain_change_below_the_precision_is_no_difference():
    # 2% faster in every pair: certain, and smaller than the 5% that counts
    found = judge([math.log(1.02)] * 3 + [math.log(1.021)], "higher", 0.05)
    assert found["verdict"] == "no difference"
    assert judge([math.log(1.02)] * 3 + [math.log(1.021)], "higher", 0.01)["verdict"] == "faster"


def test_noisy_pairs_that_straddle_are_inconclusive():
    found = judge([math.log(x) for x in (1.3, 0.8, 1.2, 0.85)], "higher", 0.05)
    assert found["verdict"] == "inconclusive"
    assert found["low"] < 1 < found["high"]


def test_fewer_than_two_pairs_are_not_measured():
    assert judge([0.1], "higher", 0.05)["verdict"] == "not measured"


def test_the_params_name_what_is_wrong():
    good = {"model": MODEL, "candidate": {"runtime": "onnx", "variant": "int8"}}
    targets = ab_targets(good, CONFIG)
    assert [(t["ab_side"], t["variant"]) for t in targets] == [
        ("baseline", "fp32"),
        ("candidate", "int8"),
    ]
    assert provisioning_params(good, CONFIG)["variants"] == ["fp32", "int8"]
    with pytest.raises(ConfigError, match=r"candidate: all-minilm-l6-v2 has no onnx/int9"):
        parse_ab({"model": MODEL, "candidate": {"variant": "int9"}}, CONFIG)
    with pytest.raises(ConfigError, match=r"baseline.settings: unknown server setting 'wrokers'"):
        parse_ab({"model": MODEL, "baseline": {"settings": {"wrokers": 2}}}, CONFIG)
    with pytest.raises(ConfigError, match=r"slices: Input should be greater than or equal to 2"):
        parse_ab({"model": MODEL, "slices": 1}, CONFIG)
    with pytest.raises(ConfigError, match=r"candidate.runtim: Extra inputs"):
        parse_ab({"model": MODEL, "candidate": {"runtim": "onnx"}}, CONFIG)
    with pytest.raises(ConfigError, match="unknown model"):
        parse_ab({"model": "no-such-model"}, CONFIG)
