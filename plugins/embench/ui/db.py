"""Read-only access to the results database for the UI.

URL: EMBENCH_UI_DB_URL (a read-only role in deployments), else the pipeline's own
(EMBENCH_DB_URL, else the SQLite file in the data dir). Sessions are read-only where the
dialect allows it: PostgreSQL connections start with default_transaction_read_only=on,
SQLite connections with PRAGMA query_only. The UI never migrates the schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from embench.store.db import database_url, make_engine

READ_ONLY_OPTION = "-c default_transaction_read_only=on"


def ui_database_url() -> str:
    return os.environ.get("EMBENCH_UI_DB_URL") or database_url()


def read_only_engine(url: str | None = None) -> Engine:
    parsed = make_url(url or ui_database_url())
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        options = parsed.query.get("options")
        existing = " ".join(options) if isinstance(options, tuple) else (options or "")
        if "default_transaction_read_only" not in existing:
            parsed = parsed.update_query_dict({"options": f"{existing} {READ_ONLY_OPTION}".strip()})
    engine = make_engine(parsed.render_as_string(hide_password=False))
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_query_only)
    return engine


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction is always rolled back (nothing to commit)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        finally:
            session.rollback()
