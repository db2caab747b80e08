"""Engine, sessions, retries and migrations of the results database.

The URL comes from EMBENCH_DB_URL, else an SQLite file in the data dir. Connection failures
are retried a bounded number of times with exponential backoff, then reported as one
EmbenchError naming the URL with its password masked.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from embench.errors import EmbenchError
from embench.paths import data_dir

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")


@dataclass(frozen=True)
class RetrySettings:
    """Bounded retries for an unreachable or busy database: `attempts` tries in all, waiting
    `backoff_s`, then twice that, ... capped at `max_backoff_s`."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    connect_timeout_s: int = 10


DEFAULT_RETRY = RetrySettings()
_RETRY: weakref.WeakKeyDictionary[Engine, RetrySettings] = weakref.WeakKeyDictionary()


def database_url() -> str:
    """EMBENCH_DB_URL, else sqlite:///<data dir>/results.db."""
    if url := os.environ.get("EMBENCH_DB_URL"):
        return url
    return f"sqlite:///{data_dir() / 'results.db'}"


def mask_url(url: str | sa.URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def make_engine(url: str | None = None, retry: RetrySettings = DEFAULT_RETRY) -> Engine:
    """An engine for `url` (default: database_url()). Nothing connects until first use."""
    url = url or database_url()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise EmbenchError(f"invalid results database URL {mask_url(url)}: {exc}") from exc
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    elif parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": retry.connect_timeout_s}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise EmbenchError(f"cannot use results database {mask_url(url)}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _RETRY[engine] = retry
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _retry_settings(engine: Engine) -> RetrySettings:
    return _RETRY.get(engine, DEFAULT_RETRY)


def with_retries(engine: Engine, what: str, action: Callable[[], T]) -> T:
    """Run `action` (a whole transaction: safe to repeat), retrying connection-level
    failures; after the last attempt raise EmbenchError naming the masked URL."""
    retry = _retry_settings(engine)
    delay = retry.backoff_s
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if attempt == retry.attempts:
                raise EmbenchError(
                    f"{what}: results database {mask_url(engine.url)} unreachable after "
                    f"{retry.attempts} attempts: {reason}"
                ) from exc
            log.warning(
                "%s: database %s: %s; retry %d/%d in %.1fs",
                what,
                mask_url(engine.url),
                reason,
                attempt,
                retry.attempts - 1,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, retry.max_backoff_s)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", mask_url(engine.url).replace("%", "%%"))
    return config


MIGRATION_LOCK_TIMEOUT_S = 600.0


def migration_lock_path(engine: Engine) -> Path | None:
    """The lock file beside an SQLite database file (`results.db.migrate.lock`); None for an
    in-memory database or another dialect (PostgreSQL upgrades take an advisory lock in
    migrations/env.py)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):  # a URI filename: no plain path to put a lock beside
        return None
    return Path(url.database).with_name(Path(url.database).name + ".migrate.lock")


@contextmanager
def migration_lock(engine: Engine, timeout_s: float = MIGRATION_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialize migrations of one SQLite file across processes: an exclusive fcntl lock on
    a file beside it, held for the whole upgrade. SQLite runs DDL outside the driver's
    transactions, so two processes creating the schema of one new file at once would
    otherwise both see it empty and one fail half way ("table ... already exists"). The
    lock is released when the holder ends, however it ends; the lock file stays (removing
    it would let a third process lock a different file)."""
    path = migration_lock_path(engine)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock (SQLite is for one machine)
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = path.open("a")
    except OSError as exc:
        raise EmbenchError(f"migrate: cannot open the migration lock {path}: {exc}") from exc
    with handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EmbenchError(
                        f"migrate: another process has held the migration lock {path} for "
                        f"over {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def upgrade_to_head(engine: Engine) -> None:
    """Bring the database to the latest migration; a no-op when it is there already.
    Concurrent upgrades of one database wait for each other (SQLite: migration_lock;
    PostgreSQL: an advisory lock), so each finds the schema at head or brings it there."""
    from alembic import command

    config = alembic_config(engine)
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per step is noise

    def upgrade() -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    with migration_lock(engine):
        with_retries(engine, "migrate", upgrade)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def read() -> str | None:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    return with_retries(engine, "read revision", read)
