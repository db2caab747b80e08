"""
### Embedding A/B

A candidate against a baseline (two variants, two runtimes, two server images or two sets of
server settings) of one model, measured interleaved on one host in one run: both servers
start on the host, the load client alternates short slices between them, and the verdict per
metric (faster / slower / no difference at the stated precision / inconclusive) comes from
the ratios of adjacent slices and their 95% interval. `embench trigger --dag embedding_ab`
runs it from a pipeline and exits non-zero when the candidate is slower.

    plan_ab -> provision_host (setup) -> prepare_model [baseline, candidate]
            -> measure_ab -> release_host (teardown) -> compare_ab (verdicts, ab.md)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, setup, task, teardown

from embench import ab, live_runs, steps
from embench.config import load_config
from embench.config.params import params_of

CONFIG = load_config()
RETRY: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=5)}


def ctx() -> steps.RunContext:
    return steps.RunContext.from_airflow(get_current_context())


@dag(
    dag_id="embedding_ab",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["benchmark", "embeddings", "a/b"],
    doc_md=__doc__,
    default_args={"execution_timeout": timedelta(minutes=30), "retries": 0},
    params=params_of(
        ab.ABParams,
        defaults={
            "model": CONFIG.benchmark.models[0],
            "candidate": ab.ABSide(variant="int8").model_dump(),
        },
        schema_extra={"model": {"enum": sorted(CONFIG.models)}},
    ),
)
def embedding_ab() -> None:
    @task(execution_timeout=timedelta(minutes=1))
    def plan_ab(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return ab.ab_targets(params or {}, CONFIG)

    @setup
    @task(execution_timeout=timedelta(minutes=20), **RETRY)
    def provision_host(params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        run = ab.provisioning_params(params or {}, CONFIG)
        ti = get_current_context()["ti"]
        return steps.provision_host(run, 0, ctx(), CONFIG, live_runs.from_task_instance(ti))

    @task(execution_timeout=timedelta(minutes=30), **RETRY)
    def prepare_model(target: dict[str, Any]) -> dict[str, Any]:
        return steps.prepare_target(target, CONFIG)

    @task(execution_timeout=timedelta(minutes=60), **RETRY)
    def measure_ab(
        prepared: list[dict[str, Any]],
        provisioned: dict[str, Any],
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return ab.measure(list(prepared), provisioned, params or {}, ctx(), CONFIG)

    @teardown
    @task(execution_timeout=timedelta(minutes=20), retries=4)
    def release_host(provisioned: dict[str, Any] | None) -> None:
        steps.release_host(provisioned, ctx(), CONFIG)

    @task(execution_timeout=timedelta(minutes=2))
    def compare_ab(record: dict[str, Any], params: dict[str, Any] | None = None) -> list[Any]:
        verdicts = ab.compare(record, ab.parse_ab(params or {}, CONFIG).precision)
        ab.write_report(record, verdicts, ctx().run_dir())
        return verdicts

    targets = plan_ab()
    host = provision_host()
    prepared = prepare_model.expand(target=targets)
    record = measure_ab(prepared, host)
    targets >> host
    record >> release_host(host)
    compare_ab(record)


embedding_ab()
