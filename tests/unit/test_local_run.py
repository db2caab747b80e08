"""`embench run`'s Airflow metadata database: migrated once per Airflow version, then copied."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from embench import local_run


def pools(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT pool, slots FROM slot_pool").fetchall())


def test_the_first_run_migrates_and_later_runs_copy_its_database(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    first = {"AIRFLOW_HOME": str(tmp_path / "one")}
    Path(first["AIRFLOW_HOME"]).mkdir()
    local_run.prepare_airflow(first)
    database = tmp_path / "one" / "airflow.db"
    assert pools(database)["embench_benchmark_host"] == 1
    templates = list((tmp_path / "cache" / "airflow").glob("metadata-*-embench_benchmark_host.db"))
    assert len(templates) == 1

    def no_airflow_command(*args, **kwargs):
        raise AssertionError(f"ran {args[0]} although the template exists")

    monkeypatch.setattr(subprocess, "run", no_airflow_command)
    second = {"AIRFLOW_HOME": str(tmp_path / "two")}
    Path(second["AIRFLOW_HOME"]).mkdir()
    local_run.prepare_airflow(second)
    assert pools(tmp_path / "two" / "airflow.db") == pools(database)
    # a run's leftovers never survive into the next: the database is replaced, not reused,
    # and so is SQLite's write-ahead log, which would replay into the copy (kept open here)
    db = sqlite3.connect(tmp_path / "two" / "airflow.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("UPDATE slot_pool SET slots = 7 WHERE pool = 'embench_benchmark_host'")
    db.commit()
    local_run.prepare_airflow(second)
    db.close()
    assert pools(tmp_path / "two" / "airflow.db")["embench_benchmark_host"] == 1


def test_a_failed_migration_leaves_no_template(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "home"
    home.mkdir()

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="no database for you")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(SystemExit, match="embench run: airflow db migrate failed"):
        local_run.prepare_airflow({"AIRFLOW_HOME": str(home)})
    assert "no database for you" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "airflow").exists()
