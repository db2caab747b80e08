"""Store fixtures: every store test runs on SQLite and on a throwaway PostgreSQL database
(created through the `postgres` database at the start of the session, dropped at its end;
skipped when PostgreSQL does not answer on EMBENCH_TEST_PG_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from embench.store.db import RetrySettings, make_engine, upgrade_to_head
from embench.store.models import Base

FAST_RETRY = RetrySettings(attempts=2, backoff_s=0.05, max_backoff_s=0.1, connect_timeout_s=3)


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
