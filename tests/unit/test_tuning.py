"""The autotune search without a server: candidate generation, coordinate descent, the
margin rule and the cache key (embench.tuning)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from embench.config.schema import AutotuneConfig
from embench.tuning import (
    Measurement,
    axis_options,
    cache_key,
    confirm,
    coordinate_descent,
    effective,
    tuning_scenarios,
)

BASE = {"workers": 2, "threads": 1, "spinning": False, "max_batch_tokens": 8192}


def space(**kwargs):
    return AutotuneConfig.model_validate(kwargs)


def test_axes_are_the_runtimes_own_in_search_order():
    full = space(
        layouts=["2x1", "1x2"],
        inter_op_threads=[1, 2],
        spinning=[False, True],
        graph_optimization_level=["all", "basic"],
        max_batch_tokens=[2048],
    )
    onnx = axis_options(full, "onnx")
    assert list(onnx) == [
        "layout",
        "inter_op_threads",
        "spinning",
        "graph_optimization_level",
        "max_batch_tokens",
    ]
    assert onnx["layout"] == [{"workers": 2, "threads": 1}, {"workers": 1, "threads": 2}]
    assert onnx["graph_optimization_level"] == [
        {"graph_optimization_level": "all"},
        {"graph_optimization_level": "basic"},
    ]
    # PyTorch has inter-op threads but no spinning or graph levels; OpenVINO neither
    assert list(axis_options(full, "torch")) == ["layout", "inter_op_threads", "max_batch_tokens"]
    assert list(axis_options(full, "openvino")) == ["layout", "max_batch_tokens"]
    # an empty list leaves its axis alone
    assert list(axis_options(space(layouts=[], spinning=[]), "onnx")) == []


def test_the_space_is_strict():
    for bad in (
        {"layouts": ["2by1"]},
        {"layouts": ["0x2"]},
        {"inter_op_threads": [0]},
        {"graph_optimization_level": ["max"]},
        {"spinning": [True, True]},
        {"measure_s": "3"},  # a quoted number is a mistake
        {"margin": 1.5},
        {"colour": 1},
    ):
        with pytest.raises(ValidationError):
            AutotuneConfig.model_validate(bad)


def test_settings_the_server_runs_alike_are_one_candidate():
    assert effective({**BASE, "graph_optimization_level": "all"}, "onnx") == effective(BASE, "onnx")
    assert effective({**BASE, "inter_op_threads": 1}, "onnx") == effective(BASE, "onnx")
    # for PyTorch an unset inter-op pool is its own default, not 1
    assert effective({**BASE, "inter_op_threads": 1}, "torch") != effective(BASE, "torch")
    # settings a runtime ignores do not make another candidate
    assert effective({**BASE, "spinning": True}, "openvino") == effective(BASE, "openvino")
    assert effective({**BASE, "spinning": True}, "onnx") != effective(BASE, "onnx")
    assert effective({**BASE, "threads": 2}, "onnx") != effective(BASE, "onnx")


class FakeServer:
    """QPS as a function of the settings; records what was measured."""

    def __init__(self, qps):
        self.qps = qps
        self.measured: list[dict] = []

    def __call__(self, settings):
        self.measured.append(dict(settings))
        return Measurement(qps=self.qps(settings), p99_ms=10.0)


def test_coordinate_descent_walks_one_axis_at_a_time_from_the_default():
    def qps(s):
        value = 100.0
        value += 30 if s["workers"] == 1 else 0  # 1x2 is better here
        value += 10 if s.get("spinning") else 0
        value -= 20 if s.get("graph_optimization_level") == "basic" else 0
        return value

    server = FakeServer(qps)
    axes = axis_options(
        space(
            layouts=["2x1", "1x2"],
            spinning=[False, True],
            graph_optimization_level=["all", "extended", "basic"],
        ),
        "onnx",
    )
    best, candidates = coordinate_descent(BASE, axes, server, "onnx", max_candidates=20)
    assert best == {**BASE, "workers": 1, "threads": 2, "spinning": True}
    # the default first; 2x1, spinning=false and level all equal settings measured already
    assert server.measured[0] == BASE
    assert [c["axis"] for c in candidates] == [
        None,
        "layout",
        "spinning",
        "graph_optimization_level",
        "graph_optimization_level",
    ]
    assert len(server.measured) == 1 + 1 + 1 + 2
    assert candidates[1]["qps"] == 130.0 and candidates[2]["qps"] == 140.0


def test_the_candidate_count_is_bounded():
    server = FakeServer(lambda s: 100.0 + s["max_batch_tokens"] / 1000)
    axes = axis_options(space(layouts=[], spinning=[], max_batch_tokens=[1, 2, 3, 4, 5]), "onnx")
    _, candidates = coordinate_descent(BASE, axes, server, "onnx", max_candidates=3)
    assert len(candidates) == len(server.measured) == 3


def test_a_candidate_that_failed_never_wins_and_a_failed_default_stops_the_search():
    def measure(settings):
        if settings.get("spinning"):
            return Measurement(qps=0.0, p99_ms=None, error="did not start")
        return Measurement(qps=100.0, p99_ms=9.0)

    axes = axis_options(space(layouts=[], spinning=[True]), "onnx")
    best, candidates = coordinate_descent(BASE, axes, measure, "onnx", max_candidates=5)
    assert best == BASE and candidates[1]["error"] == "did not start"
    with pytest.raises(Exception, match="default settings could not be measured"):
        coordinate_descent({**BASE, "spinning": True}, axes, measure, "onnx", max_candidates=5)


@pytest.mark.parametrize(
    ("default", "best", "margin", "wins"),
    [
        ([100, 100], [110, 110], 0.05, True),  # 10% in every pair
        ([100, 100], [104, 104], 0.05, False),  # within the margin
        ([100, 100], [130, 99], 0.05, False),  # 14.5% on average but lost a pair: noise
        ([100], [105.1], 0.05, True),
        ([100], [105.0], 0.05, False),  # "more than" the margin
        ([100, 90], [95, 85], 0.0, False),  # slower
    ],
)
def test_the_margin_rule(default, best, margin, wins):
    won, ratio = confirm(default, best, margin)
    assert won is wins
    assert ratio == pytest.approx(sum(best) / sum(default))


def test_the_margin_rule_needs_pairs():
    with pytest.raises(ValueError, match="as many measurements"):
        confirm([100, 100], [110], 0.05)


def key(**changes):
    values = {
        "hardware_key": "h" * 64,
        "limits": {"cpuset": "0-1", "cpus": None, "memory": "4g"},
        "manifest_sha256": "m" * 64,
        "server_build": "embench-server:onnx@sha256:1",
        "runtime": "onnx",
        "base_settings": BASE,
        "space": space(),
    }
    values.update(changes)
    return cache_key(**values)


def test_the_cache_key_changes_with_everything_tuning_depends_on():
    same = key()
    assert key() == same
    assert key(space=space(enabled=True)) == same  # switching it on is not another search
    for changed in (
        {"hardware_key": "x" * 64},
        {"limits": {"cpuset": "0-3", "cpus": None, "memory": "4g"}},
        {"manifest_sha256": "n" * 64},
        {"server_build": "embench-server:onnx@sha256:2"},
        {"runtime": "torch"},
        {"base_settings": {**BASE, "workers": 1}},
        {"space": space(spinning=[False])},
        {"space": space(margin=0.1)},
    ):
        assert key(**changed) != same, changed


def test_a_candidate_is_one_short_closed_scenario():
    document = tuning_scenarios(space(measure_s=2.0, warmup_s=0.5, concurrency=4), {"a": "b"})
    (scenario,) = document.scenarios
    assert scenario.mode == "closed" and scenario.concurrency == 4
    assert scenario.min_duration_s == 2.0 and scenario.max_duration_s >= 2.0
    assert document.stability.extend_until_stable is False
    assert document.warmup.duration_s == 0.5
    assert document.metadata.labels == {"a": "b"}
