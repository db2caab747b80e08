"""Concurrent migrations of one new SQLite file: real processes, started together, each
running upgrade_to_head; all must succeed and leave the schema at head once (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from embench.store.db import (
    alembic_config,
    current_revision,
    make_engine,
    migration_lock,
    migration_lock_path,
)

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4
ROUNDS = 4

# Each child imports everything first, then waits for the go file, so that the upgrades
# (not the imports) start together. argv: url, go file, "lock" or "nolock".
CHILD = r"""
import contextlib, os, sys, time
from pathlib import Path
import embench.store.db as db
url, go, mode = sys.argv[1:4]
if mode == "nolock":
    db.migration_lock = lambda engine, timeout_s=0: contextlib.nullcontext()
engine = db.make_engine(url, db.RetrySettings(attempts=1))
print("READY", flush=True)
deadline = time.monotonic() + 60
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.001)
db.upgrade_to_head(engine)
print("REVISION", db.current_revision(engine))
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def migrate_together(db_file: Path, mode: str = "lock") -> list[subprocess.CompletedProcess[str]]:
    """PROCESSES children upgrading `db_file` at once; their completed processes."""
    url = f"sqlite:///{db_file}"
    go = db_file.with_suffix(".go")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(go), mode],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for child in children:  # every child has imported and is polling for the go file
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
    go.touch()
    done = []
    for child in children:
        out, err = child.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def _head() -> str:
    from alembic.script import ScriptDirectory

    engine = make_engine("sqlite://")
    return str(ScriptDirectory.from_config(alembic_config(engine)).get_current_head())


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_sqlite_upgrades_serialize(tmp_path: Path, round_: int) -> None:
    db_file = tmp_path / f"round{round_}" / "results.db"
    db_file.parent.mkdir()
    done = migrate_together(db_file)
    head = _head()
    for child in done:
        assert child.returncode == 0, child.stderr[-3000:]
        assert f"REVISION {head}" in child.stdout
    engine = make_engine(f"sqlite:///{db_file}")
    assert current_revision(engine) == head
    with engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        tables = set(sa.inspect(connection).get_table_names())
    engine.dispose()
    assert [tuple(v) for v in versions] == [(head,)]  # at head once
    assert {"runs", "scenario_results", "verdicts", "environments"} <= tables
    assert migration_lock_path(engine) == db_file.with_name("results.db.migrate.lock")


def test_the_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    """While this process holds the lock, another process cannot take it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a')\n"
        "try:\n"
        "    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('TOOK')\n"
        "except BlockingIOError:\n"
        "    print('BUSY')\n"
    )
    path = str(migration_lock_path(engine))
    with migration_lock(engine):
        held = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True)
    assert held.stdout.strip() == "BUSY" and free.stdout.strip() == "TOOK"


def test_in_memory_sqlite_takes_no_file_lock() -> None:
    assert migration_lock_path(make_engine("sqlite://")) is None
    assert migration_lock_path(make_engine("sqlite:///:memory:")) is None
