"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never ask a hub
# Airflow reads its home at import: tests that import it get a private one, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="embench-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from embench.config import AppConfig, load_config
from embench.prepare import PreparedVariant, prepare_model

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "EMBENCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


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


DEFAULT_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def app_config() -> AppConfig:
    return load_config(REPO_ROOT / "config")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact cache private to this test session."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def prepared_minilm(app_config: AppConfig, model_cache: Path) -> dict[str, PreparedVariant]:
    """The default model converted for real into all three variants, parity-gated."""
    prepared = prepare_model(
        app_config, DEFAULT_MODEL, ["fp32", "optimized", "int8"], cache_root=model_cache
    )
    return {p.variant: p for p in prepared}


@pytest.fixture(scope="session")
def test_host_support() -> None:
    """Skips unless this machine can make test hosts (root, ip, nsenter, dockerd, sshd...);
    removes the hosts that killed sessions left behind."""
    from tests.testhost import missing_requirements, sweep_test_hosts

    missing = missing_requirements()
    if missing:
        pytest.skip(f"test hosts need {', '.join(missing)} (see tests/testhost.py)")
    sweep_test_hosts()


@pytest.fixture
def test_hosts(test_host_support: None, tmp_path: Path) -> Iterator[Callable[..., list]]:
    """A factory of test hosts (tests/testhost.py): `make(n=1) -> list[TestHost]`, each a
    network namespace with its own address, sshd and dockerd; all destroyed at teardown."""
    from tests.testhost import TestHost, create_test_hosts

    made: list[TestHost] = []

    def make(n: int = 1) -> list[TestHost]:
        return create_test_hosts(tmp_path, n, made)

    yield make
    for host in reversed(made):
        host.destroy()


# ---------------------------------------------------------------- moto: the EC2 stand-in

MOTO_REGION = "eu-west-1"
MOTO_CONN_ID = "embench_moto"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server mode on loopback, and the Airflow connection MOTO_CONN_ID pointing at it
    (as an environment variable, so that `embench run` subprocesses see it too)."""
    import json
    import socket

    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": MOTO_REGION},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_{MOTO_CONN_ID.upper()}", json.dumps(conn))
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(var, raising=False)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def ec2(moto_endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "ec2",
        endpoint_url=moto_endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
