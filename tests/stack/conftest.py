"""Fixtures of the full-stack test: throwaway PostgreSQL databases (Airflow's metadata and the
results store), a short-scenario config, a warm model cache, and the running deployment. The
deployment is always stopped and the databases always dropped, whether the test passed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from embench.config import load_config
from embench.prepare import prepare_model
from tests.stack.helpers import AirflowStack, write_short_config

MODEL = "all-minilm-l6-v2"
VARIANT = "fp32"


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
def warm_cache(tmp_path_factory: pytest.TempPathFactory, stack_config_dir: Path) -> Path:
    """The model prepared (fp32 only) into a cache of this module, so that the DAG's
    prepare_model is a cache hit."""
    cache = tmp_path_factory.mktemp("stack-model-cache")
    prepare_model(load_config(stack_config_dir), MODEL, [VARIANT], cache_root=cache)
    return cache


@pytest.fixture(scope="module")
def airflow_stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: dict[str, str],
    stack_config_dir: Path,
    warm_cache: Path,
) -> Iterator[AirflowStack]:
    """api-server, scheduler and dag-processor running, healthy, on a migrated metadata
    database with the pool; stopped (with every process they started) at the end."""
    root = tmp_path_factory.mktemp("airflow-stack")
    stack = AirflowStack(
        home=root / "airflow-home",
        metadata_url=pg_databases["metadata"],
        extra_env={
            "EMBENCH_CONFIG_DIR": str(stack_config_dir),
            "EMBENCH_DATA_DIR": str(root / "data"),
            "EMBENCH_CACHE_DIR": str(warm_cache),
            "EMBENCH_DB_URL": pg_databases["results"],
        },
    )
    failed = True
    try:
        stack.prepare()
        stack.start()
        stack.wait_healthy(timeout_s=120)
        yield stack
        failed = False
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        if failed:
            print(f"Airflow home kept for inspection: {stack.home}")
