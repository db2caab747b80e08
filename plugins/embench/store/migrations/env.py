"""Alembic environment of the results store. Run through embench.store.db.upgrade_to_head,
which passes an open connection in `config.attributes["connection"]`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from embench.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Concurrent upgrades (two tasks starting at once) wait for each other.
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(0x656D62656E6368)))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use embench.store.upgrade_to_head")
run_migrations_online()
