"""The detector against stored history, on SQLite and PostgreSQL: bad nights, unstable and
invalid nights, what restarts a history, upgrade verdicts, baseline marks, pooled
repetitions, host-probe explanations, within-run noise floors. Each test names the rule it
shows; removing the rule makes it fail."""

from __future__ import annotations

import json
import random
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from embench import cli
from embench.regression import DetectorSettings
from embench.store.db import alembic_config, session_scope
from embench.store.detect import INTERVALS, detect_dag_run, stored_verdicts
from embench.store.ingest import ingest_result
from embench.store.models import Run, ScenarioRow, VerdictRow

from .factory import MODEL, T0, run_result

SETTINGS = DetectorSettings()
SCENARIO = ("closed-c4",)


def ingest(engine, night: int, metrics: tuple[str, ...] = ("qps",), **kwargs: Any):
    return ingest_result(
        engine,
        run_result(night, scenarios=SCENARIO, **kwargs),
        detector=SETTINGS,
        metrics=metrics,
    )


def verdict(report, metric: str = "qps", kind: str = "night") -> dict[str, Any]:
    [found] = [v for v in report.verdicts if v["metric"] == metric and v["kind"] == kind]
    return found


def kinds(report, metric: str = "qps") -> set[str]:
    return {v["kind"] for v in report.verdicts if v["metric"] == metric}


def steady(rng: random.Random, level: float = 100.0, cv: float = 0.01) -> float:
    return rng.gauss(level, level * cv)


# -- robust scale, usable nights ------------------------------------------------------------


def test_one_bad_but_valid_night_in_twenty_does_not_hide_a_twenty_percent_drop(engine):
    rng = random.Random(1)
    for night in range(20):
        ingest(engine, night, qps=45.0 if night == 9 else steady(rng))
    ingest(engine, 20, qps=80.0)
    found = verdict(ingest(engine, 21, qps=80.5))
    assert found["status"] == "regressed", found["reason"]
    assert found["relative_change"] == pytest.approx(-0.2, abs=0.02)
    assert found["details"]["scale"] < 2.0  # a MAD of about 1 QPS; the bad night is not in it


@pytest.mark.parametrize("bad", ["unstable", "invalid"])
def test_unstable_and_invalid_nights_are_not_in_the_baseline(engine, bad: str):
    rng = random.Random(2)
    for night in range(6):
        ingest(engine, night, qps=steady(rng))
    for night in range(6, 16):  # ten slow nights that do not count
        ingest(
            engine,
            night,
            qps=steady(rng, 80.0),
            **{"stable" if bad == "unstable" else "valid": False},
        )
    ingest(engine, 16, qps=80.0)
    report = ingest(engine, 17, qps=80.5)
    found = verdict(report)
    # Counted, the ten nights at 80 would be the baseline and 80 "unchanged".
    assert found["status"] == "regressed", found["reason"]
    assert found["baseline_median"] == pytest.approx(100.0, rel=0.03)
    assert found["history_size"] == 5  # 6 usable nights, the newest one confirming
    # an unusable night itself gets no verdict
    assert ingest(engine, 18, qps=80.0, valid=False).verdicts == []


# -- what restarts a history ----------------------------------------------------------------


def test_a_client_library_change_does_not_restart_the_history(engine):
    rng = random.Random(3)
    for night in range(8):
        ingest(engine, night, qps=steady(rng))
    report = ingest(engine, 8, qps=100.0, libraries={"httpx": "0.29", "rich": "16.0"})
    found = verdict(report)
    assert found["status"] == "unchanged" and found["history_size"] >= 5
    assert kinds(report) == {"night"}
    with session_scope(engine) as s:
        assert len(set(s.scalars(sa.select(Run.baseline_key)).all())) == 1


@pytest.mark.parametrize(
    "change, named",
    [
        ({"runtime_version": "1.21.0"}, "onnxruntime 1.20.0 -> 1.21.0"),
        (
            {"server_libraries": {"onnxruntime": "1.20.0", "tokenizers": "0.23.0"}},
            "tokenizers 0.22.2 -> 0.23.0",
        ),
        ({"manifest": "f" * 64}, "model artifact mfp32000 -> ffffffff"),
    ],
)
def test_a_runtime_tokenizer_or_model_change_restarts_with_an_upgrade_verdict(
    engine, change: dict[str, Any], named: str
):
    rng = random.Random(4)
    for night in range(10):
        ingest(engine, night, qps=steady(rng))
    after = [ingest(engine, 10 + i, qps=88.0 + i * 0.2, **change) for i in range(4)]
    first = verdict(after[0], kind="upgrade")
    assert first["status"] == "regressed", first["reason"]
    assert first["reason"].startswith(f"closed-c4: {named}: qps -12.")
    assert first["details"]["nights_after"] == 1 and first["details"]["nights_before"] == 10
    night = verdict(after[0])
    assert night["status"] == "no_baseline"
    assert f"history restarted at {named}" in night["reason"]
    # the comparison is given again while the new baseline has 1..upgrade_nights nights
    assert [verdict(r, kind="upgrade")["details"]["nights_after"] for r in after[:3]] == [1, 2, 3]
    assert kinds(after[3]) == {"night"}


def test_an_upgrade_that_changes_nothing_says_so(engine):
    rng = random.Random(5)
    for night in range(10):
        ingest(engine, night, qps=steady(rng))
    report = ingest(engine, 10, qps=100.2, runtime_version="1.21.0")
    assert verdict(report, kind="upgrade")["status"] == "unchanged"


# -- baseline marks -------------------------------------------------------------------------


def test_a_baseline_mark_hides_earlier_history(engine, monkeypatch, capsys):
    monkeypatch.setenv("EMBENCH_DB_URL", engine.url.render_as_string(hide_password=False))
    rng = random.Random(6)
    for night in range(10):
        ingest(engine, night, qps=steady(rng))
    at = (T0 + timedelta(days=9, hours=12)).isoformat()
    args = ["baseline", "mark", "--model", MODEL, "--variant", "fp32", "--at", at]
    assert cli.main([*args, "--reason", "new thread pinning", "--json"]) == 0
    mark = json.loads(capsys.readouterr().out)
    assert mark["reason"] == "new thread pinning" and mark["compare"] is True

    report = ingest(engine, 10, qps=90.0)
    night = verdict(report)
    assert night["status"] == "no_baseline", night["reason"]
    assert f"baseline mark #{mark['id']} 'new thread pinning'" in night["reason"]
    upgrade = verdict(report, kind="upgrade")
    assert upgrade["status"] == "regressed" and upgrade["details"]["mark"] == mark["id"]

    assert cli.main(["baseline", "list", "--json"]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == [mark["id"]]
    assert cli.main(["baseline", "list"]) == 0
    assert "new thread pinning" in capsys.readouterr().out
    # removed, the mark no longer hides the history
    assert cli.main(["baseline", "remove", str(mark["id"])]) == 0
    capsys.readouterr()
    assert verdict(ingest(engine, 10, qps=90.0))["status"] == "unchanged"  # one night only


def test_a_mark_without_comparison_and_a_mark_of_another_variant(engine, monkeypatch, capsys):
    monkeypatch.setenv("EMBENCH_DB_URL", engine.url.render_as_string(hide_password=False))
    rng = random.Random(7)
    for night in range(10):
        ingest(engine, night, qps=steady(rng))
        ingest(engine, night, qps=steady(rng), variant="int8")
    at = (T0 + timedelta(days=9, hours=12)).isoformat()
    base = ["baseline", "mark", "--model", MODEL, "--at", at, "--reason", "accepted"]
    assert cli.main([*base, "--variant", "int8", "--no-compare"]) == 0
    capsys.readouterr()
    fp32 = ingest(engine, 10, qps=100.0)
    assert kinds(fp32) == {"night"} and verdict(fp32)["history_size"] >= 5  # not marked
    int8 = ingest(engine, 10, qps=100.0, variant="int8")
    assert kinds(int8) == {"night"}  # marked, but no comparison asked for
    assert "no comparison with the nights before" in verdict(int8)["reason"]


def test_a_mark_naming_nothing_stored_is_refused(engine, monkeypatch, capsys):
    monkeypatch.setenv("EMBENCH_DB_URL", engine.url.render_as_string(hide_password=False))
    ingest(engine, 0, qps=100.0)
    assert cli.main(["baseline", "mark", "--model", "nope", "--reason", "x"]) == 1
    assert "no stored results match model=nope" in capsys.readouterr().err
    assert cli.main(["baseline", "remove", "99"]) == 1
    assert "no baseline mark #99" in capsys.readouterr().err


# -- repetitions ----------------------------------------------------------------------------


def test_repetitions_of_a_dag_run_are_one_night(engine):
    rng = random.Random(8)
    for night in range(8):
        for rep in range(3):
            ingest(engine, night, qps=steady(rng), repetition=rep)
    ingest(engine, 8, qps=80.0, repetition=0)
    # tonight: two slow repetitions and one fast: the median is slow
    reports = [ingest(engine, 9, qps=q, repetition=r) for r, q in enumerate((80.0, 81.0, 130.0))]
    found = verdict(reports[-1])
    assert found["status"] == "regressed", found["reason"]
    assert found["repetitions"] == 3 and found["value"] == 81.0
    assert "median of 3 repetitions" in found["reason"]
    assert found["history_size"] == 7  # nights, not 25 repetitions (9 nights, 2 confirming)
    with session_scope(engine) as s:
        night9 = s.scalars(
            sa.select(VerdictRow).join(Run).where(Run.dag_run_id == "scheduled__night-9")
        ).all()
        # judged once: one verdict, on the newest repetition's row
        assert [(v.metric, v.kind) for v in night9] == [("qps", "night")]
        holder = s.get(ScenarioRow, night9[0].scenario_result_id)
        assert s.get(Run, holder.run_pk).map_index == 2
    # the DAG's entry point judges the whole night once, and returns the same
    verdicts = detect_dag_run(
        engine, "embedding_benchmark", "scheduled__night-9", SETTINGS, ["qps", "p99_ms"]
    )
    assert sorted((v["metric"], v["status"]) for v in verdicts) == [
        ("p99_ms", "unchanged"),
        ("qps", "regressed"),
    ]
    assert detect_dag_run(engine, "embedding_benchmark", "none", SETTINGS, ["qps"]) == []
    with session_scope(engine) as s:
        per_run = [
            stored_verdicts(s, pk)
            for pk in s.scalars(sa.select(Run.id).where(Run.dag_run_id == "scheduled__night-9"))
        ]
        assert [len(v) for v in per_run] == [0, 0, 2]  # the report lists each judgement once


# -- host probe -----------------------------------------------------------------------------


def test_a_night_on_a_slow_host_is_explained(engine):
    rng = random.Random(9)
    for night in range(8):
        ingest(engine, night, ("qps", "p99_ms"), qps=steady(rng), probe_speed=rng.gauss(1, 0.01))
    ingest(engine, 8, qps=70.0, p99_ms=28.6, probe_speed=0.7)
    report = ingest(engine, 9, ("qps", "p99_ms"), qps=70.5, p99_ms=28.5, probe_speed=0.7)
    qps = verdict(report)
    assert qps["status"] == "explained", qps["reason"]
    assert "host probe 0.70x its history" in qps["reason"]
    assert re.search(r"70\.5 measured, 10\d\.?\d* at the host's usual speed", qps["reason"])
    assert qps["details"]["host_ratio"] == pytest.approx(0.7, abs=0.01)
    assert verdict(report, "p99_ms")["status"] == "explained"


def test_without_a_probe_or_beyond_the_probe_the_regression_stands(engine):
    rng = random.Random(10)
    for night in range(8):
        ingest(engine, night, qps=steady(rng), probe_speed=rng.gauss(1, 0.01))
    ingest(engine, 8, qps=70.0)
    unprobed = verdict(ingest(engine, 9, qps=70.5))
    assert unprobed["status"] == "regressed" and "host probe" not in unprobed["reason"]
    partly = verdict(ingest(engine, 9, qps=50.0, probe_speed=0.8))
    assert partly["status"] == "regressed"
    assert re.search(r"still regressed when adjusted \(50 measured, 62\.\d+ at", partly["reason"])


# -- within-run noise -----------------------------------------------------------------------


@pytest.mark.skipif("qps" not in INTERVALS, reason="the result schema has no qps interval yet")
def test_the_runs_own_intervals_floor_the_scale(engine):
    for night in range(10):
        ingest(engine, night, qps=100.0 + 0.05 * (night % 3), qps_ci=0.10)
    ingest(engine, 10, qps=107.0, qps_ci=0.10)
    wide = verdict(ingest(engine, 11, qps=107.0, qps_ci=0.10))
    # a 10% interval (standard error ~5%): 7% is within the runs' own noise
    assert wide["status"] == "unchanged" and "within-run noise" in wide["reason"]
    for night in range(12):
        ingest(engine, night, qps=100.0 + 0.05 * (night % 3) if night < 10 else 107.0)
    tight = verdict(ingest(engine, 11, qps=107.0))
    assert tight["status"] == "improved" and "default floor 1.0%" in tight["reason"]


# -- migration ------------------------------------------------------------------------------


def test_migration_0002_rekeys_stored_histories(engine):
    ingest(engine, 0, qps=100.0, libraries={"rich": "14"})
    ingest(engine, 1, qps=100.0, libraries={"rich": "15"})

    def keys() -> set[str]:
        with session_scope(engine) as s:
            return set(s.scalars(sa.select(ScenarioRow.baseline_key)).all())

    assert len(keys()) == 1
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    assert len(keys()) == 2  # 0001 keyed client libraries in
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert len(keys()) == 1
