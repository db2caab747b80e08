"""UI fixtures: one seeded SQLite history per session (see seed.py), the Benchmarks app over
it with Airflow's authentication stubbed (the auth tests use the real thing), and a live
server plus headless Chromium for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from embench.store.db import make_engine, upgrade_to_head
from embench.ui.app import create_app
from embench.ui.auth import require_user
from embench.ui.db import read_only_engine
from tests.ui.seed import Seeded, seed_history

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@dataclass(frozen=True)
class History:
    url: str
    seeded: Seeded


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    url = f"sqlite:///{tmp_path_factory.mktemp('ui-db') / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    seeded = seed_history(engine)
    engine.dispose()
    return History(url, seeded)


def stub_user() -> dict[str, Any]:
    return {"username": "test"}


def report_data(url: str, run: str) -> Any:
    """The report of one pipeline run (embench.report.collect) from the store at `url`."""
    from embench.report import collect, resolve_ingest_keys
    from embench.store.db import session_scope

    engine = make_engine(url)
    with session_scope(engine) as session:
        keys, title = resolve_ingest_keys(session, run)
        data = collect(session, keys, title)
    engine.dispose()
    return data


def authenticated_app(url: str) -> FastAPI:
    app = create_app(read_only_engine(url))
    app.dependency_overrides[require_user] = stub_user
    return app


@pytest.fixture(scope="session")
def client(history: History) -> Iterator[TestClient]:
    with TestClient(authenticated_app(history.url)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
