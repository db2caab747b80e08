"""Fixtures of the full-stack test: throwaway PostgreSQL databases (Airflow's metadata and the
results store), a short-scenario config, a warm model cache, and the running deployment. The
deployment is always stopped and the databases always dropped, whether the test passed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

# helpers' checks (check_stored_results) report their failures as test asserts do.
pytest.register_assert_rewrite("tests.stack.helpers")

from tests.stack.helpers import (  # noqa: E402
    CELERY,
    REDIS_URL,
    AirflowStack,
    write_short_config,
)
from tests.testhost import TestHost, create_test_hosts  # noqa: E402


@pytest.fixture(scope="module")
def pg_databases(pg_database: Callable[[], str]) -> dict[str, str]:
    """Two empty databases, as SQLAlchemy URLs: `metadata` (psycopg2, Airflow's default
    driver) and `results` (psycopg, the results store's); dropped at the session's end."""
    metadata = sa.make_url(pg_database()).set(drivername="postgresql+psycopg2")
    return {
        "metadata": metadata.render_as_string(hide_password=False),
        "results": pg_database(),
    }


@pytest.fixture(scope="module")
def stack_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_short_config(tmp_path_factory.mktemp("stack-config"))


@pytest.fixture(scope="module")
def warm_cache(model_cache: Path, prepared_minilm: dict) -> Path:
    """The session's model cache, MiniLM prepared in it (fp32, optimized, int8), so that the
    DAG's prepare_model is a cache hit."""
    return model_cache


@pytest.fixture(scope="module")
def airflow_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: dict[str, str],
    stack_config_dir: Path,
    warm_cache: Path,
) -> Iterator[AirflowStack]:
    """api-server, scheduler and dag-processor running, healthy, on a migrated metadata
    database with the pools (LocalExecutor); stopped (with every process they started) at
    the end."""
    root = tmp_path_factory.mktemp("airflow-stack")
    stack = AirflowStack(
        home=root / "airflow-home",
        metadata_url=pg_databases["metadata"],
        extra_env=_pipeline_env(root, pg_databases, stack_config_dir, warm_cache),
    )
    yield from _running(stack)


@pytest.fixture(scope="module")
def stack_test_hosts(
    test_host_support: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[TestHost]]:
    """Two test hosts (tests/testhost.py) for the module's stack; destroyed at its end."""
    made: list[TestHost] = []
    try:
        yield create_test_hosts(tmp_path_factory.mktemp("stack-hosts"), 2, made)
    finally:
        for host in reversed(made):
            host.destroy()


@pytest.fixture(scope="module")
def celery_config_dir(tmp_path_factory: pytest.TempPathFactory, stack_test_hosts: list) -> Path:
    """The short config on the ssh provisioner over both test hosts, benchmarking at once
    (host.parallel 2), each on a core of its own."""
    return write_short_config(tmp_path_factory.mktemp("celery-config"), stack_test_hosts)


@pytest.fixture(scope="module")
def celery_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: dict[str, str],
    celery_config_dir: Path,
    warm_cache: Path,
) -> Iterator[AirflowStack]:
    """The deployment on the CeleryExecutor against two test hosts: this machine's Redis as
    the broker (the stack's own queue and key prefix), the metadata database as the result
    backend, and two Celery workers (worker-1, worker-2) consuming the stack's queue, all
    running and ready."""
    _require_redis(REDIS_URL)
    root = tmp_path_factory.mktemp("celery-stack")
    stack = AirflowStack(
        home=root / "airflow-home",
        metadata_url=pg_databases["metadata"],
        extra_env=_pipeline_env(root, pg_databases, celery_config_dir, warm_cache),
        executor=CELERY,
        workers=2,
        parallelism=4,
    )
    yield from _running(stack)


def _pipeline_env(
    root: Path, pg_databases: dict[str, str], config_dir: Path, cache: Path
) -> dict[str, str]:
    return {
        "EMBENCH_CONFIG_DIR": str(config_dir),
        "EMBENCH_DATA_DIR": str(root / "data"),
        "EMBENCH_CACHE_DIR": str(cache),
        "EMBENCH_DB_URL": pg_databases["results"],
    }


def _running(stack: AirflowStack) -> Iterator[AirflowStack]:
    failed = True
    try:
        stack.prepare()
        stack.start()
        stack.wait_healthy(timeout_s=120)
        stack.wait_workers_ready(timeout_s=120)
        yield stack
        failed = False
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        if failed:
            print(f"Airflow home kept for inspection: {stack.home}")


def _require_redis(url: str) -> None:
    """Skip (as the PostgreSQL fixtures do) when no Redis answers at url."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unavailable at {url}: {exc} (.ci/run starts redis-server)")
    finally:
        client.close()
