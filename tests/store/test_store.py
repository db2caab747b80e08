"""The results store on SQLite and PostgreSQL: migrations, idempotent ingest, rollback,
queries, regression detection against stored history, unreachable databases."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from client.result import write_atomic
from embench import cli
from embench.errors import EmbenchError
from embench.regression import DetectorSettings
from embench.store import ingest as ingest_mod
from embench.store.db import (
    RetrySettings,
    current_revision,
    make_engine,
    mask_url,
    session_scope,
    upgrade_to_head,
)
from embench.store.detect import detect_regressions
from embench.store.ingest import ingest_paths, ingest_result
from embench.store.models import Base, Environment, Run, ScenarioRow, VerdictRow
from embench.store.queries import (
    RunFilter,
    compare_runs,
    export_csv,
    latest_comparison,
    list_runs,
    metric_history,
)

from .factory import MODEL, T0, run_result

SETTINGS = DetectorSettings()
METRICS = ("qps", "p99_ms")


def counts(engine: sa.Engine) -> dict[str, int]:
    with session_scope(engine) as s:
        return {
            m.__tablename__: s.scalar(sa.select(sa.func.count()).select_from(m))
            for m in (Run, ScenarioRow, Environment, VerdictRow)
        }


# -- migrations ---------------------------------------------------------------------------


def test_migrations_from_empty_match_the_orm_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade_to_head(engine)
    upgrade_to_head(engine)  # at head already: a no-op
    assert current_revision(engine) == "0002"
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
    engine.dispose()


def test_the_default_url_is_sqlite_in_the_data_dir(monkeypatch, tmp_path: Path) -> None:
    from embench.store.db import database_url

    monkeypatch.delenv("EMBENCH_DB_URL", raising=False)
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path))
    assert database_url() == f"sqlite:///{tmp_path / 'results.db'}"
    monkeypatch.setenv("EMBENCH_DB_URL", "postgresql+psycopg://u:secret@h/db")
    assert database_url() == "postgresql+psycopg://u:secret@h/db"
    assert "secret" not in mask_url(database_url())


# -- ingest -------------------------------------------------------------------------------


def test_ingesting_the_same_document_twice_leaves_one_copy(engine) -> None:
    doc = run_result(0)
    first = ingest_result(engine, doc)
    second = ingest_result(engine, doc)
    assert (first.replaced, second.replaced) == (False, True)
    assert counts(engine) == {"runs": 1, "scenario_results": 2, "environments": 1, "verdicts": 0}
    with session_scope(engine) as s:
        row = s.scalars(sa.select(ScenarioRow).where(ScenarioRow.name == "closed-c4")).one()
        assert row.qps == 100.0 and row.p99_ms == 20.0
        assert row.server_rss_bytes_max == 5_000_000_000
        assert row.windows[0]["qps"] == 100.0
        assert row.lag_p99_ms is None
        assert row.comparability_key == doc.scenarios[0].comparability_key


def test_the_ingest_key_comes_from_airflow_labels(engine) -> None:
    labels = {"dag_id": "embedding_benchmark", "run_id": "scheduled__2026", "map_index": "2"}
    ingest_result(engine, run_result(0, run_id="a", labels=labels))
    # an Airflow retry produces a new document run_id, but the same task instance
    report = ingest_result(engine, run_result(0, run_id="b", labels=labels, qps=90.0))
    assert report.replaced and report.ingest_key == "embedding_benchmark/scheduled__2026/2"
    with session_scope(engine) as s:
        run = s.scalars(sa.select(Run)).one()
        assert (run.doc_run_id, run.trigger_kind, run.map_index) == ("b", "scheduled", 2)


def test_a_failing_ingest_leaves_nothing(engine, monkeypatch) -> None:
    original = ingest_mod._insert_scenarios

    def fail_after_rows(session, result, run):
        original(session, result, run)
        raise RuntimeError("injected failure after the first rows")

    monkeypatch.setattr(ingest_mod, "_insert_scenarios", fail_after_rows)
    with pytest.raises(RuntimeError, match="injected"):
        ingest_result(engine, run_result(0))
    assert counts(engine) == {"runs": 0, "scenario_results": 0, "environments": 0, "verdicts": 0}


def test_a_failing_reingest_keeps_the_previous_copy(engine, monkeypatch) -> None:
    ingest_result(engine, run_result(0, qps=100.0))

    def fail(session, result, run):
        raise RuntimeError("injected")

    monkeypatch.setattr(ingest_mod, "_insert_scenarios", fail)
    with pytest.raises(RuntimeError):
        ingest_result(engine, run_result(0, qps=50.0))
    with session_scope(engine) as s:
        assert s.scalars(sa.select(ScenarioRow.qps)).all() == [100.0, 100.0]


def test_ingest_paths_reads_files_and_leaves_them(engine, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for night in (2, 0, 1):
        write_atomic(folder / f"night{night}.json", run_result(night))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    reports = ingest_paths(engine, [folder])
    assert [r.doc_run_id for r in reports] == [f"fp32-onnxruntime-night-{n}" for n in range(3)]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EmbenchError, match=r"bad\.json: not a valid result document"):
        ingest_paths(engine, [bad])


def test_an_unreachable_database_fails_clearly_after_bounded_retries(tmp_path: Path) -> None:
    url = "postgresql+psycopg://bench:s3cret@127.0.0.1:9/results"  # port 9: closed
    retry = RetrySettings(attempts=3, backoff_s=0.01, max_backoff_s=0.02, connect_timeout_s=2)
    engine = make_engine(url, retry)
    path = tmp_path / "result.json"
    write_atomic(path, run_result(0))
    before = path.read_bytes()
    with pytest.raises(EmbenchError) as caught:
        ingest_paths(engine, [path])
    message = str(caught.value)
    assert "127.0.0.1:9/results" in message and "after 3 attempts" in message
    assert "s3cret" not in message and "***" in message
    assert path.read_bytes() == before


# -- queries ------------------------------------------------------------------------------


def seed(engine, nights: int = 6) -> None:
    for night in range(nights):
        ingest_result(engine, run_result(night, variant="fp32", qps=100.0 + night, p99_ms=20.0))
        ingest_result(engine, run_result(night, variant="int8", qps=200.0 + night, p99_ms=10.0))


def test_metric_history_over_time(engine) -> None:
    seed(engine)
    with session_scope(engine) as s:
        points = metric_history(s, "qps", model=MODEL, variant="fp32", scenario="closed-c4")
    assert [p["value"] for p in points] == [100.0 + n for n in range(6)]
    assert points[0]["time"] == T0.isoformat()
    key = points[0]["comparability_key"]
    with session_scope(engine) as s:
        assert len(metric_history(s, "qps", model=MODEL, comparability_key=key)) == 6
        assert len(metric_history(s, "qps", model=MODEL, variant="fp32", limit=3)) == 3
        since = metric_history(s, "p99_ms", model=MODEL, since=T0 + timedelta(days=4))
        assert len(since) == 2 * 2 * 2  # 2 nights x 2 variants x 2 scenarios
        with pytest.raises(EmbenchError, match="unknown metric"):
            metric_history(s, "qps; drop table runs", model=MODEL)


def test_latest_comparison_table(engine) -> None:
    seed(engine)
    with session_scope(engine) as s:
        table = latest_comparison(s, model=MODEL)
    assert {(r["variant"], r["scenario"]) for r in table} == {
        (v, n) for v in ("fp32", "int8") for n in ("closed-c4", "closed-c1")
    }
    fp32 = next(r for r in table if r["variant"] == "fp32")
    assert fp32["qps"] == 105.0 and fp32["model_load_ms"] == 800.0
    assert set(fp32) >= {
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "server_cpu_pct_mean",
        "server_rss_bytes_max",
    }


def test_compare_two_runs_with_deltas(engine) -> None:
    ingest_result(engine, run_result(0, qps=100.0, p99_ms=20.0))
    ingest_result(engine, run_result(1, qps=110.0, p99_ms=18.0, model_load_ms=700.0))
    with session_scope(engine) as s:
        result = compare_runs(s, "fp32-onnxruntime-night-0", "fp32-onnxruntime-night-1")
        with pytest.raises(EmbenchError, match="no stored run"):
            compare_runs(s, "nope", "fp32-onnxruntime-night-1")
    scenario = result["scenarios"][0]
    assert scenario["comparable"]
    qps = next(m for m in scenario["metrics"] if m["metric"] == "qps")
    assert qps["delta"] == pytest.approx(10.0) and qps["relative"] == pytest.approx(0.10)
    assert result["model_load_ms"]["delta"] == -100.0


def test_list_runs_with_filters(engine) -> None:
    seed(engine, nights=3)
    with session_scope(engine) as s:
        assert len(list_runs(s)) == 6
        fp32 = list_runs(s, RunFilter(model=MODEL, variant="fp32"))
        assert [r["doc_run_id"] for r in fp32] == [f"fp32-onnxruntime-night-{n}" for n in (2, 1, 0)]
        window = RunFilter(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
        assert len(list_runs(s, window)) == 2
        assert list_runs(s, RunFilter(status="failed")) == []
        assert fp32[0]["scenarios"] == 2


def test_csv_export(engine) -> None:
    seed(engine, nights=2)
    out = io.StringIO()
    with session_scope(engine) as s:
        assert export_csv(s, out, RunFilter(variant="int8")) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"int8"}
    assert float(rows[0]["qps"]) == 200.0 and rows[0]["lag_p99_ms"] == ""


# -- regression detection (more in test_detect.py) ----------------------------------------


def nightly(engine, series: list[float], metric: str = "p99_ms", **kwargs) -> list[dict]:
    """Ingest one run per value; return the last run's night verdicts for `metric`."""
    report = None
    for night, value in enumerate(series):
        figures = {"p99_ms": 20.0, "qps": 100.0, metric: value}
        report = ingest_result(
            engine,
            run_result(night, scenarios=("closed-c4",), **figures, **kwargs),
            detector=SETTINGS,
            metrics=METRICS,
        )
    assert report is not None
    return [v for v in report.verdicts if v["metric"] == metric and v["kind"] == "night"]


def test_a_ten_percent_p99_step_is_caught_on_its_second_night(engine) -> None:
    rng = random.Random(1)
    history = [rng.gauss(20.0, 0.2) for _ in range(12)]
    [first] = nightly(engine, [*history, 22.0])
    assert first["status"] == "unchanged" and "not confirmed" in first["reason"]
    [verdict] = nightly(engine, [*history, 22.0, 22.1])
    assert verdict["status"] == "regressed" and verdict["relative_change"] > 0.05
    with session_scope(engine) as s:
        stored = s.scalars(sa.select(VerdictRow).where(VerdictRow.status == "regressed")).all()
        assert [v.metric for v in stored] == ["p99_ms"]
        assert list_runs(s, RunFilter())[0]["regressions"] == 1


def test_a_qps_drop_regresses_and_a_qps_rise_improves(engine) -> None:
    rng = random.Random(2)
    history = [rng.gauss(100.0, 1.0) for _ in range(10)]
    [drop] = nightly(engine, [*history, 88.0, 87.0], metric="qps")
    assert drop["status"] == "regressed"
    for night, qps in ((10, 115.0), (11, 116.0)):  # replace the two nights
        report = ingest_result(
            engine,
            run_result(night, scenarios=("closed-c4",), qps=qps),
            detector=SETTINGS,
            metrics=["qps"],
        )
    assert report.verdicts[0]["status"] == "improved"


def test_noise_is_not_flagged(engine) -> None:
    rng = random.Random(3)
    series = [rng.gauss(20.0, 0.4) for _ in range(25)]
    statuses = []
    for night, value in enumerate(series):
        report = ingest_result(
            engine,
            run_result(night, scenarios=("closed-c4",), p99_ms=value),
            detector=SETTINGS,
            metrics=["p99_ms"],
        )
        statuses.append(report.verdicts[0]["status"])
    assert statuses[:5] == ["no_baseline"] * 5
    assert set(statuses[5:]) == {"unchanged"}


def test_short_history_gives_no_baseline(engine) -> None:
    [verdict] = nightly(engine, [20.0, 20.1, 19.9, 30.0])
    assert verdict["status"] == "no_baseline" and verdict["history_size"] == 3


def test_detect_regressions_as_a_separate_call(engine) -> None:
    for night in range(7):
        ingest_result(engine, run_result(night, scenarios=("closed-c4",), p99_ms=20.0))
    for night in (7, 8):
        ingest_result(engine, run_result(night, scenarios=("closed-c4",), p99_ms=30.0))
    verdicts = detect_regressions(engine, "fp32-onnxruntime-night-8", SETTINGS, METRICS)
    assert {(v["metric"], v["status"]) for v in verdicts} == {
        ("p99_ms", "regressed"),
        ("qps", "unchanged"),
    }
    # judging again replaces, never duplicates
    detect_regressions(engine, "fp32-onnxruntime-night-8", SETTINGS, METRICS)
    assert counts(engine)["verdicts"] == 2


# -- CLI ----------------------------------------------------------------------------------


def test_cli_ingest_history_compare_runs_export(engine, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("EMBENCH_DB_URL", engine.url.render_as_string(hide_password=False))
    for night in range(2):
        write_atomic(tmp_path / f"r{night}.json", run_result(night, qps=100.0 + night))
    assert cli.main(["ingest", str(tmp_path), "--json"]) == 0
    ingested = json.loads(capsys.readouterr().out)
    assert [r["scenarios"] for r in ingested] == [2, 2]
    args = ["history", "--model", MODEL, "--variant", "fp32", "--scenario", "closed-c4"]
    assert cli.main([*args, "--metric", "qps", "--json"]) == 0
    assert [p["value"] for p in json.loads(capsys.readouterr().out)] == [100.0, 101.0]
    a, b = "fp32-onnxruntime-night-0", "fp32-onnxruntime-night-1"
    assert cli.main(["compare", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["b"]["doc_run_id"] == b
    assert cli.main(["compare", a, b]) == 0
    assert "qps" in capsys.readouterr().out
    assert cli.main(["runs", "--variant", "fp32", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert cli.main(["export", "--output", str(tmp_path / "out.csv")]) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 5
    assert cli.main(["compare", a, "missing"]) == 1
    assert "no stored run 'missing'" in capsys.readouterr().err
