"""Full stack: the DAG under a real Airflow deployment (api-server, scheduler, dag-processor,
LocalExecutor, PostgreSQL metadata), triggered through the REST API with a conf as the UI's
trigger form sends it, polled to success; its results are then read from the results database.
Invalid confs are rejected by the API, naming the param."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from embench.store.db import make_engine, session_scope
from embench.store.models import Run, ScenarioRow
from embench.store.queries import dag_run_ingest_keys
from tests.stack.conftest import MODEL, VARIANT
from tests.stack.helpers import AirflowStack, wait_for

pytestmark = pytest.mark.slow

DAG_ID = "embedding_benchmark"
SCENARIOS = ["closed-c1", "closed-c4"]
REPETITIONS = 2
RUN_DEADLINE_S = 180
FINISHED = {"success", "failed"}


def form_conf(**overrides: Any) -> dict[str, Any]:
    """Every param, as the trigger form posts them (its defaults edited)."""
    return {
        "models": [MODEL],
        "variants": [VARIANT],
        "scenarios": SCENARIOS,
        "repetitions": REPETITIONS,
        "provisioner": "local",
        "launcher": "process",
        "fail_on_regression": False,
        **overrides,
    }


def trigger(stack: AirflowStack, conf: dict[str, Any]) -> Any:
    """POST the body Airflow 3.3's trigger form posts (an empty run id and note are left
    out; no logical date, no data interval)."""
    body = {
        "conf": conf,
        "data_interval_end": None,
        "data_interval_start": None,
        "logical_date": None,
        "partition_key": None,
    }
    return stack.request("POST", f"/dags/{DAG_ID}/dagRuns", json=body)


def wait_parsed(stack: AirflowStack) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def parsed() -> bool:
        response = stack.request("GET", f"/dags/{DAG_ID}")
        if response.status_code == 200:
            found.update(response.json())
            return True
        return False

    def describe() -> str:
        errors = stack.request("GET", "/importErrors").text
        return f"{DAG_ID} not parsed; import errors: {errors}"

    wait_for(parsed, 120, describe, stack.check_alive)
    return found


def failure_report(stack: AirflowStack, run_id: str, state: str) -> str:
    tis = stack.task_instances(DAG_ID, run_id)
    lines = [f"run {run_id} ended {state}; task states:"]
    lines += [f"  {ti['task_id']}[{ti['map_index']}]: {ti['state']}" for ti in tis]
    for ti in tis:
        if ti["state"] not in ("success", "skipped", None):
            lines.append(f"===== log of {ti['task_id']}[{ti['map_index']}] =====")
            lines.append(stack.task_log(DAG_ID, run_id, ti))
    lines.append(stack.logs(3000))
    return "\n".join(lines)


def test_triggered_run_succeeds_and_stores_results(airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    dag = wait_parsed(stack)
    assert dag["dag_id"] == DAG_ID

    response = stack.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    assert response.status_code == 200, response.text
    assert response.json()["is_paused"] is False

    response = trigger(stack, form_conf())
    assert response.status_code == 200, response.text
    run = response.json()
    run_id = run["dag_run_id"]
    assert run["logical_date"] is None
    assert run["conf"] == form_conf()

    state = ""

    def finished() -> bool:
        nonlocal state
        response = stack.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        response.raise_for_status()
        state = response.json()["state"]
        return state in FINISHED

    started = time.monotonic()
    try:
        wait_for(finished, RUN_DEADLINE_S, lambda: f"run still {state}", stack.check_alive, 3)
    except TimeoutError:
        pytest.fail(failure_report(stack, run_id, f"not finished ({state})"))
    if state != "success":
        pytest.fail(failure_report(stack, run_id, state))
    print(f"run {run_id}: {state} in {time.monotonic() - started:.0f} s")

    tis = stack.task_instances(DAG_ID, run_id)
    assert {
        (ti["task_id"], ti["map_index"]): ti["state"] for ti in tis if ti["state"] != "success"
    } == {}
    mapped = sorted(ti["map_index"] for ti in tis if ti["task_id"] == "benchmark.run_benchmark")
    assert mapped == list(range(REPETITIONS))
    # The stop_server teardowns stopped every benchmark server the run started.
    assert stack.benchmark_servers() == []

    engine = make_engine(stack.extra_env["EMBENCH_DB_URL"])
    try:
        with session_scope(engine) as session:
            keys = dag_run_ingest_keys(session, DAG_ID, run_id)
            runs = session.scalars(
                sa.select(Run).where(Run.ingest_key.in_(keys)).order_by(Run.map_index)
            ).all()
            assert [r.map_index for r in runs] == list(range(REPETITIONS))
            for stored in runs:
                assert (stored.dag_id, stored.dag_run_id) == (DAG_ID, run_id)
                assert (stored.model, stored.variant) == (MODEL, VARIANT)
                assert stored.trigger_kind == "manual"
                names = session.scalars(
                    sa.select(ScenarioRow.name).where(ScenarioRow.run_pk == stored.id)
                ).all()
                assert sorted(names) == sorted(SCENARIOS)
            # Nothing else: the store holds this run's results only.
            assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == REPETITIONS
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("launcher", "nope"),
        ("models", ["no-such-model"]),
        ("repetitions", 0),
        ("scenarios", ["no-such-scenario"]),
    ],
)
def test_invalid_conf_is_rejected_naming_the_param(
    airflow_stack: AirflowStack, param: str, value: Any
) -> None:
    wait_parsed(airflow_stack)
    response = trigger(airflow_stack, form_conf(**{param: value}))
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(f"Invalid input for param {param}:"), response.text
    runs = airflow_stack.request("GET", f"/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
    assert all(run["conf"].get(param) != value for run in runs)  # no run was created
