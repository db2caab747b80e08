"""The result schema: round trip, flat statistics, versioning, atomic writes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from client.result import SCHEMA_VERSION, RunResult, json_schema, load_result, write_atomic

from .conftest import run_in_process

# The statistics the results store maps to columns: each must be a plain scalar field.
STATISTICS = [
    "qps", "texts_per_s", "tokens_per_s", "server_tokens_per_s", "send_rate", "target_rate",
    "min_ms", "max_ms", "mean_ms", "stddev_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
    "p999_ms", "service_p50_ms", "service_p99_ms", "lag_mean_ms", "lag_p99_ms", "lag_max_ms",
    "error_rate", "requests_sent", "requests_ok", "requests_failed", "duration_s",
    "server_cpu_pct_mean", "server_cpu_pct_max", "server_rss_bytes_mean", "server_rss_bytes_max",
    "client_cpu_pct_mean", "client_cpu_pct_max", "server_queue_p99_ms",
    "server_inference_mean_ms", "inflight_max", "qps_spread", "p99_spread",
    "valid", "stable", "client_saturated", "trials",
    # schema 2.0: every request in the tail, intervals, stable windows, open loop, SLO
    "success_count", "success_p50_ms", "success_p99_ms", "success_p999_ms", "confidence",
    "p50_ci_low_ms", "p50_ci_high_ms", "p99_ci_low_ms", "p99_ci_high_ms", "p999_ci_low_ms",
    "p999_ci_high_ms", "qps_ci_low", "qps_ci_high", "window_s", "stable_windows",
    "figures_from_s", "requests_scheduled", "requests_dropped", "loop_lag_p99_ms",
    "loop_lag_max_ms", "slo_p99_ms", "goodput_per_s", "slo_met", "client_tokens_per_s",
]  # fmt: skip


@pytest.fixture(scope="module")
def sample_result(fake_server, tmp_path_factory) -> tuple[RunResult, str]:
    out = tmp_path_factory.mktemp("result") / "r.json"
    scenarios = [
        {"name": "c", "mode": "closed", "concurrency": 2, "min_requests": 1, "min_duration_s": 0.4},
        {"name": "o", "mode": "open", "rate": 100, "min_requests": 1, "min_duration_s": 0.4},
    ]
    result = run_in_process(fake_server.url(delay="fixed:1"), scenarios, out)
    return result, out.read_text()


def test_result_round_trips_through_json(sample_result):
    result, text = sample_result
    loaded = RunResult.model_validate_json(text)
    assert loaded == result
    assert loaded.model_dump_json() == result.model_dump_json()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


def test_every_statistic_is_a_plain_scalar_field():
    props = json_schema()["$defs"]["ScenarioResult"]["properties"]
    for name in STATISTICS:
        assert name in props, name
        types = {t.get("type") for t in props[name].get("anyOf", [props[name]])}
        assert types <= {"number", "integer", "boolean", "null"}, (name, types)


def test_run_document_carries_method_and_provenance(sample_result):
    result, _ = sample_result
    assert result.status == "complete" and result.finished_at is not None
    env = result.environment
    assert env.cpu_count_logical >= 1 and env.memory_total_bytes > 0 and env.cpu_flags
    assert len(env.hardware_key) == 64 and "aiohttp" in env.libraries
    c, o = result.scenarios
    assert c.definition_key != o.definition_key
    assert c.comparability_key != c.definition_key
    assert c.definition.corpus_sha256 == result.client.corpus_sha256
    assert c.warmup == result.warmup and c.stability_params == result.stability
    assert c.windows and all(w.qps >= 0 for w in c.windows)
    assert o.lag_p50_ms is not None and c.lag_p50_ms is None  # open-loop only


def test_definition_key_ignores_durations_but_not_load(sample_result):
    from client.scenario import ClientOptions, ScenarioParams, definition_of

    base = {"name": "x", "mode": "closed", "concurrency": 4}
    a = ScenarioParams(**base, min_duration_s=5)
    b = ScenarioParams(**{**base, "name": "y"}, min_duration_s=50, max_duration_s=100)
    c = ScenarioParams(**{**base, "concurrency": 8})
    key = lambda p: definition_of(p, ClientOptions(), "sha", "approx-v1").key()  # noqa: E731
    assert key(a) == key(b) != key(c)


def test_minor_versions_are_read_and_other_majors_refused(sample_result):
    _, text = sample_result
    doc = json.loads(text)
    assert SCHEMA_VERSION == "2.0"
    doc["schema_version"] = "2.7"
    doc["a_field_from_the_future"] = 1
    doc["scenarios"][0]["another_new_statistic"] = 2.0
    assert RunResult.model_validate(doc).schema_version == "2.7"
    for other in ("1.0", "3.0"):
        doc["schema_version"] = other
        with pytest.raises(ValidationError, match="not readable"):
            RunResult.model_validate(doc)


def test_atomic_write_leaves_no_temporary_files(sample_result, tmp_path):
    result, _ = sample_result
    out = tmp_path / "deep" / "result.json"
    write_atomic(out, result)
    write_atomic(out, result)
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]
    assert load_result(out) == result
    assert out.stat().st_mode & 0o044  # readable by the ingesting user


def test_the_instance_type_is_part_of_the_history_key_when_a_label_names_it():
    from client.result import history_hardware_key

    hardware = "a" * 64
    # no label (this machine, a static host): the fingerprint's key, as always
    assert history_hardware_key(hardware, {}) == hardware
    assert history_hardware_key(hardware, {"instance_type": ""}) == hardware
    c7i = history_hardware_key(hardware, {"instance_type": "c7i.large"})
    m7i = history_hardware_key(hardware, {"instance_type": "m7i.large"})
    # same CPU, cores and memory, different types: two histories
    assert len({hardware, c7i, m7i}) == 3
    assert c7i == history_hardware_key(hardware, {"instance_type": "c7i.large", "host": "x"})
