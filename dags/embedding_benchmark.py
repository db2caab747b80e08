"""
### Embedding benchmark

Per model, runtime and variant: prepare the model (ONNX export, optimization, int8; OpenVINO
conversion, bf16, int8; the PyTorch model itself; a parity gate for each), start the inference
server (with its settings tuned for the host, when autotune is on), drive it with the load
client, stop it, store the results, judge them against their history. Each host is
provisioned first and released last; with `host.parallel` (and the ec2 `instance_types`
axis) several hosts run their share of the plan at once, one benchmark at a time each (a
pool of one per host). Slot N > 0's tasks carry the suffix `_N`.

    plan -> provision_host (setup)
         -> benchmark[its share of model x runtime x variant x repetition]:
              prepare_model -> ship_to_host -> tune_server (per host, cached)
                            -> start_server (setup) -> run_benchmark
                            -> stop_server (teardown) -> store_results
         -> release_host (teardown)
    (every host) -> detect_regressions (repetitions pooled) -> report (incl. what was not
                    measured, and why) -> outcome (the run's state: failed when a task failed,
                    or when it regressed with fail_on_regression)

Trigger it from the UI with the form (models, runtimes, variants, scenarios, repetitions,
provisioner, launcher, fail on regression, autotune) or let it run nightly. Settings:
config/benchmark.yaml.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, setup, task, task_group, teardown
from airflow.sdk.exceptions import AirflowSkipException

from embench import alerts, host_slots, live_runs, steps
from embench.config import load_config
from embench.config.params import params_of

CONFIG = load_config()
DEFAULTS = steps.default_params(CONFIG)
# benchmark.yaml's host.parallel (x host.ec2.instance_types) hosts, each with its own pool.
SLOTS = host_slots.host_slots(CONFIG.benchmark.host)
# Retries where a retry can help (a busy database, a slow host, a server that crashed).
RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=5),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
}
# A teardown must not give up easily: what it leaves behind costs money or skews results.
TEARDOWN_RETRY: dict[str, Any] = {**RETRY, "retries": 4}


def ctx() -> steps.RunContext:
    return steps.RunContext.from_airflow(get_current_context())


def run_is_live() -> steps.RunIsLive:
    return live_runs.from_task_instance(get_current_context()["ti"])


def record_failure(context: Any) -> None:
    """A task failed for good: keep which and why for the run's report."""
    steps.record_task_failure(
        steps.RunContext.from_airflow(context), context["ti"].task_id, context.get("exception")
    )


@dag(
    dag_id="embedding_benchmark",
    schedule=CONFIG.benchmark.schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["benchmark", "embeddings", "onnxruntime", "openvino", "pytorch"],
    doc_md=__doc__,
    default_args={
        "execution_timeout": timedelta(minutes=30),
        "retries": 0,
        "on_failure_callback": record_failure,
    },
    # benchmark.yaml's alerts: the run's regressions, or its failure (none configured: none)
    **alerts.dag_callbacks(CONFIG.benchmark.alerts),
    # The trigger form: steps.RunParams' fields, with the choices this config has.
    params=params_of(
        steps.RunParams,
        defaults=DEFAULTS,
        schema_extra={
            "models": {"items": {"type": "string", "enum": sorted(CONFIG.models)}},
            "scenarios": {
                "items": {"type": "string", "enum": [s.name for s in CONFIG.benchmark.scenarios]}
            },
            "autotune": {"type": "boolean"},  # a checkbox: unset (None) is the CLI's only
        },
    ),
)
def embedding_benchmark() -> None:
    @task(execution_timeout=timedelta(minutes=1))
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return steps.plan_targets(params or {}, CONFIG)

    @task(execution_timeout=timedelta(minutes=1))
    def targets_of_slot(targets: list[dict[str, Any]], slot: int) -> list[dict[str, Any]]:
        return host_slots.targets_of(targets, slot)

    @setup
    @task(execution_timeout=timedelta(minutes=20), **RETRY)
    def provision_host(slot: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        provisioned = steps.provision_host(params or {}, slot, ctx(), CONFIG, run_is_live())
        if provisioned is None:
            raise AirflowSkipException(f"host slot {slot} has no target in this run")
        return provisioned

    @teardown
    @task(execution_timeout=timedelta(minutes=20), **TEARDOWN_RETRY)
    def release_host(provisioned: dict[str, Any] | None) -> None:
        steps.release_host(provisioned, ctx(), CONFIG)

    def slot_lane(slot: host_slots.HostSlot, targets: Any) -> tuple[Any, Any]:
        """The host of one slot and the benchmark groups it runs, one at a time (its pool)."""
        # On the host (its slot's pool of one), higher runs first: finish one benchmark before
        # the next server starts, so that no server warms up while another is measured.
        on_host = {"pool": slot.pool, "weight_rule": "absolute"}
        host = provision_host.override(task_id=f"provision_host{slot.suffix}")(slot.index)

        @task_group(group_id=f"benchmark{slot.suffix}")
        def benchmark(target: dict[str, Any]) -> Any:
            @task(execution_timeout=timedelta(minutes=30), **RETRY)
            def prepare_model(target: dict[str, Any]) -> dict[str, Any]:
                return steps.prepare_target(target, CONFIG)

            @task(execution_timeout=timedelta(minutes=30), priority_weight=5, **RETRY, **on_host)
            def ship_to_host(
                prepared: dict[str, Any], provisioned: dict[str, Any]
            ) -> dict[str, Any]:
                return steps.ship_to_host(prepared, provisioned, CONFIG)

            @task(execution_timeout=timedelta(minutes=30), priority_weight=8, **RETRY, **on_host)
            def tune_server(
                prepared: dict[str, Any],
                provisioned: dict[str, Any],
                params: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
                return steps.tune_server(prepared, provisioned, params or {}, ctx(), CONFIG)

            @setup
            @task(execution_timeout=timedelta(minutes=10), priority_weight=10, **RETRY, **on_host)
            def start_server(
                prepared: dict[str, Any], provisioned: dict[str, Any]
            ) -> dict[str, Any]:
                return steps.start_server(prepared, provisioned, ctx(), CONFIG)

            @task(
                execution_timeout=timedelta(minutes=60),
                priority_weight=20,
                retries=1,
                retry_delay=timedelta(seconds=5),
                **on_host,
            )
            def run_benchmark(
                prepared: dict[str, Any], provisioned: dict[str, Any], server: dict[str, Any]
            ) -> str:
                return steps.run_benchmark(prepared, provisioned, server, ctx(), CONFIG)

            @teardown
            @task(
                execution_timeout=timedelta(minutes=5),
                priority_weight=30,
                **TEARDOWN_RETRY,
                **on_host,
            )
            def stop_server(
                server: dict[str, Any] | None, provisioned: dict[str, Any] | None
            ) -> None:
                steps.stop_server(server, provisioned, ctx(), CONFIG)

            @task(execution_timeout=timedelta(minutes=5), **RETRY)
            def store_results(result_path: str) -> dict[str, Any]:
                return steps.store_result(result_path, CONFIG)

            prepared = prepare_model(target)
            shipped = ship_to_host(prepared, host)
            tuned = tune_server(prepared, host)
            shipped >> tuned
            server = start_server(tuned, host)
            result = run_benchmark(tuned, host, server)
            stopped = stop_server(server, host)
            result >> stopped
            stored = store_results(result)
            stopped >> stored
            return stored

        groups = benchmark.expand(target=targets)
        host >> groups
        return groups, release_host.override(task_id=f"release_host{slot.suffix}")(host)

    # Once for the whole run: repetitions of a target are one night, judged together; what
    # was stored is judged even when some groups (or a whole host) failed.
    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=5), **RETRY)
    def detect_regressions(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return steps.detect_regressions(ctx(), params or {}, CONFIG)

    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=5))
    def report(params: dict[str, Any] | None = None) -> str:
        return steps.report(ctx(), params or {}, CONFIG)

    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=1))
    def outcome(params: dict[str, Any] | None = None) -> int:
        ti = get_current_context()["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])
        failed = [
            task_id
            for run_states in states.values()
            for task_id, state in run_states.items()
            if state in ("failed", "upstream_failed")
        ]
        verdicts = ti.xcom_pull(task_ids="detect_regressions") or []
        return steps.outcome(verdicts, failed, ctx(), params or {}, CONFIG)

    planned = plan()
    judged = detect_regressions()
    for slot in SLOTS:
        # one slot: the plan is its list; several: each takes its share of the plan
        targets = (
            planned
            if len(SLOTS) == 1
            else targets_of_slot.override(task_id=f"targets_of_slot{slot.suffix or '_0'}")(
                planned, slot.index
            )
        )
        groups, released = slot_lane(slot, targets)
        groups >> released >> judged
    judged >> report() >> outcome()


embedding_benchmark()
