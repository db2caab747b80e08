"""Scenario parameters: CLI specs, sweeps, errors that name the parameter, and the contract
with embench's config models (same field names, so embench can build the client's)."""

from __future__ import annotations

import pytest

from client.scenario import (
    ScenarioFile,
    ScenarioParams,
    ScenarioSpecError,
    StabilityParams,
    WarmupParams,
    parse_scenario_spec,
)


def test_spec_with_sweep_expands_and_names_scenarios():
    out = parse_scenario_spec("mode=closed,concurrency=1/4/16,texts_per_request=8")
    assert [s.concurrency for s in out] == [1, 4, 16]
    assert [s.name for s in out] == [
        "closed-c1-b8-short",
        "closed-c4-b8-short",
        "closed-c16-b8-short",
    ]
    assert all(s.texts_per_request == 8 for s in out)
    (open_,) = parse_scenario_spec("mode=open,rate=50,arrival=constant", {"min_requests": "10"})
    assert (open_.name, open_.rate, open_.min_requests) == ("open-r50-constant-short", 50.0, 10)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mode=closed,concurrency=0", "concurrency"),
        ("mode=closed,concurrancy=4", "did you mean 'concurrency'"),
        ("mode=open", "needs 'rate'"),
        ("mode=closed,concurrency=2,min_duration_s=10,max_duration_s=5", "max_duration_s"),
        ("mode=closed,concurrency=2,length_bucket=huge", "length_bucket"),
        ("mode=sideways,concurrency=2", "mode"),
        ("mode=closed,concurrency", "key=value"),
    ],
)
def test_invalid_specs_name_the_parameter(spec: str, expected: str):
    with pytest.raises(ScenarioSpecError) as err:
        parse_scenario_spec(spec)
    assert expected in str(err.value)


def test_scenario_file_rejects_repeated_names():
    doc = {"scenarios": [{"name": "a", "mode": "closed", "concurrency": 1}] * 2}
    with pytest.raises(ValueError, match="repeated: a"):
        ScenarioFile.model_validate(doc)


def test_embench_config_models_build_the_client_models(app_config):
    """Every scenario of config/benchmark.yaml converts field by field (no second format)."""
    from embench.config.schema import ScenarioConfig, StabilityConfig, WarmupConfig

    assert set(ScenarioConfig.model_fields) == set(ScenarioParams.model_fields)
    assert set(WarmupConfig.model_fields) == set(WarmupParams.model_fields)
    assert set(StabilityConfig.model_fields) == set(StabilityParams.model_fields)
    bench = app_config.benchmark
    for scenario in bench.scenarios:
        params = ScenarioParams.model_validate(scenario.model_dump())
        assert params.model_dump() == scenario.model_dump()
    assert WarmupParams.model_validate(bench.warmup.model_dump()).model_dump() == (
        bench.warmup.model_dump()
    )
    assert StabilityParams.model_validate(bench.stability.model_dump()).model_dump() == (
        bench.stability.model_dump()
    )
    doc = {
        "scenarios": [s.model_dump() for s in bench.scenarios],
        "warmup": bench.warmup.model_dump(),
        "stability": bench.stability.model_dump(),
    }
    assert len(ScenarioFile.model_validate(doc).scenarios) == len(bench.scenarios)


def test_stability_gates_by_default_and_slo_is_a_scenario_key():
    sp = StabilityParams()
    assert (sp.window_s, sp.window_requests, sp.windows, sp.tolerance) == (2.0, 135, 3, 0.10)
    assert sp.extend_until_stable and sp.max_trials == 10
    (s,) = parse_scenario_spec("mode=closed,concurrency=1,slo_p99_ms=50")
    assert s.slo_p99_ms == 50.0
    with pytest.raises(ScenarioSpecError, match="slo_p99_ms"):
        parse_scenario_spec("mode=closed,concurrency=1,slo_p99_ms=0")
