"""Store fixtures: every store test runs on SQLite and on a throwaway PostgreSQL database
(created through the `postgres` database at the start of the session, dropped at its end;
skipped when PostgreSQL does not answer on EMBENCH_TEST_PG_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from embench.store.db import RetrySettings, make_engine, upgrade_to_head
from embench.store.models import Base

PG_ADMIN_URL = os.environ.get(
    "EMBENCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
FAST_RETRY = RetrySettings(attempts=2, backoff_s=0.05, max_backoff_s=0.1, connect_timeout_s=3)


def _admin() -> Engine:
    return sa.create_engine(
        PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Callable[[], str]]:
    """A factory of throwaway PostgreSQL databases; all are dropped at session end."""
    admin = _admin()
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unavailable at {PG_ADMIN_URL}: {exc.orig}")
    created: list[str] = []

    def create() -> str:
        name = f"embench_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)

    yield create
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (not migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_database")()


@pytest.fixture(scope="session")
def _migrated_pg(pg_database: Callable[[], str]) -> str:
    url = pg_database()
    engine = make_engine(url, FAST_RETRY)
    upgrade_to_head(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty results database: a fresh SQLite file, or the session's PostgreSQL
    database emptied before the test."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'results.db'}", FAST_RETRY)
        upgrade_to_head(eng)
    else:
        eng = make_engine(request.getfixturevalue("_migrated_pg"), FAST_RETRY)
        with eng.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    yield eng
    eng.dispose()
