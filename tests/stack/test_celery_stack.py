"""Full stack on the CeleryExecutor against two benchmark hosts: the DAG under a real Airflow
deployment whose tasks run on two Celery workers (`airflow celery worker`, this machine's
Redis as the broker, the metadata database as the result backend), triggered through the
REST API as the UI's form does, polled to the end. Two test hosts (tests/testhost.py) take a
share of the plan each, at the same time (host.parallel 2, one pool per host). Then a worker
is killed in the middle of a benchmark: the scheduler fails its task when the heartbeats
stop, the retry runs on the other worker, and every host is still released."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from client.result import load_result
from embench.store.db import make_engine, session_scope
from embench.store.models import Run, ScenarioRow
from embench.store.queries import dag_run_ingest_keys
from tests.stack.helpers import (
    DAG_ID,
    MODEL,
    SCENARIOS,
    VARIANT,
    AirflowStack,
    failure_report,
    form_conf,
    trigger,
    unpause,
    wait_finished,
    wait_for,
    wait_parsed,
)

pytestmark = [pytest.mark.slow, pytest.mark.docker]

TARGETS = 2  # repetitions of onnx/fp32: one per host
RUN_DEADLINE_S = 420
ON_HOSTS = {"provisioner": "ssh", "launcher": "docker"}


def stored_hosts(stack: AirflowStack, run_id: str) -> list[tuple[str, str, list[str]]]:
    """(host label, variant, scenario names) of each stored result of the run."""
    engine = make_engine(stack.extra_env["EMBENCH_DB_URL"])
    try:
        with session_scope(engine) as session:
            keys = dag_run_ingest_keys(session, DAG_ID, run_id)
            runs = session.scalars(sa.select(Run).where(Run.ingest_key.in_(keys))).all()
            out = []
            for run in runs:
                assert (run.dag_run_id, run.model) == (run_id, MODEL)
                names = session.scalars(
                    sa.select(ScenarioRow.name).where(ScenarioRow.run_pk == run.id)
                ).all()
                out.append((str(run.labels.get("host")), str(run.variant), sorted(names)))
            return sorted(out)
    finally:
        engine.dispose()


def hosts_left_clean(hosts: list[Any]) -> None:
    for host in hosts:
        names = host.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert [n for n in names if n.startswith("embench-")] == [], (host.name, names)
        assert not (host.work_dir / "embench.lock").exists(), f"{host.name} was not released"


def run_to_success(stack: AirflowStack, conf: dict[str, Any]) -> str:
    response = trigger(stack, conf)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    state = wait_finished(stack, run_id, RUN_DEADLINE_S)
    if state != "success":
        pytest.fail(failure_report(stack, run_id, state))
    return run_id


def test_two_workers_run_the_plan_over_two_hosts_at_once(
    celery_stack: AirflowStack, stack_test_hosts: list
) -> None:
    stack = celery_stack
    assert stack.running_workers() == ["worker-1", "worker-2"]
    wait_parsed(stack)
    unpause(stack)

    run_id = run_to_success(stack, form_conf(TARGETS, **ON_HOSTS))

    hosts = stack.task_hosts(DAG_ID, run_id)
    ran = {task: host for task, host in hosts.items() if host is not None}
    print("task instances per worker:", collections.Counter(ran.values()))
    # both workers took tasks (Redis serves the longest-waiting consumer), and each host
    # lane ran: its own provision_host, its group, its release_host
    assert set(ran.values()) == {"worker-1", "worker-2"}, hosts
    for task in ("provision_host", "provision_host_1", "release_host", "release_host_1"):
        assert (task, -1) in ran, hosts
    assert ("benchmark.run_benchmark", 0) in ran and ("benchmark_1.run_benchmark", 0) in ran
    # each host measured its share of the plan: one target each
    assert stored_hosts(stack, run_id) == [
        ("th1", VARIANT, sorted(SCENARIOS)),
        ("th2", VARIANT, sorted(SCENARIOS)),
    ]
    hosts_left_clean(stack_test_hosts)
    assert stack.benchmark_servers() == []
    # each host ran its server on its own core (its server_cpuset), never the other's
    results = sorted(Path(stack.extra_env["EMBENCH_DATA_DIR"]).rglob("result.json"))
    cores = {}
    for path in results:
        result = load_result(path)
        if result.metadata.labels.get("run_id") == run_id:
            assert result.host_probe is not None
            cores[result.metadata.labels["host"]] = result.host_probe.cpuset
    assert cores == {"th1": "0", "th2": "1"}, cores


def test_a_worker_killed_mid_benchmark_is_retried_on_the_other_and_hosts_are_released(
    celery_stack: AirflowStack, stack_test_hosts: list
) -> None:
    """The worker running a benchmark (and every process it started: a machine lost) is
    SIGKILLed. Its task's heartbeats stop; the scheduler fails that try after
    task_instance_heartbeat_timeout (30 s here), and the retry runs on the surviving worker,
    reusing the server still running on the host. The run succeeds with both results, and
    both hosts are released."""
    stack = celery_stack
    wait_parsed(stack)
    unpause(stack)
    response = trigger(stack, form_conf(TARGETS, **ON_HOSTS))
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    victim: dict[str, Any] = {}

    def benchmark_running() -> bool:
        for ti in stack.task_instances(DAG_ID, run_id):
            if (
                ti["task_id"].endswith(".run_benchmark")
                and ti["state"] == "running"
                and ti.get("hostname") in stack.running_workers()
            ):
                victim.update(ti)
                return True
        return False

    wait_for(benchmark_running, 300, lambda: "no benchmark started", stack.check_alive, 1)
    time.sleep(2)  # the client is measuring now
    stack.kill_worker(victim["hostname"], tree=True)
    survivor = next(w for w in stack.running_workers())
    print(f"killed {victim['hostname']} while it ran {victim['task_id']}; {survivor} left")

    state = wait_finished(stack, run_id, RUN_DEADLINE_S)
    if state != "success":
        pytest.fail(failure_report(stack, run_id, state))
    tries = stack.request(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{victim['task_id']}/"
        f"{victim['map_index']}/tries",
    ).json()["task_instances"]
    by_try = {t["try_number"]: (t["state"], t.get("hostname")) for t in tries}
    print("tries of the killed task:", by_try)
    assert by_try[1][1] == victim["hostname"] and by_try[1][0] != "success", by_try
    assert by_try[2] == ("success", survivor), by_try
    # nothing lost: both targets measured and stored, each on its host
    assert stored_hosts(stack, run_id) == [
        ("th1", VARIANT, sorted(SCENARIOS)),
        ("th2", VARIANT, sorted(SCENARIOS)),
    ]
    hosts_left_clean(stack_test_hosts)
