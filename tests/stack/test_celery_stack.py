"""Full stack on the CeleryExecutor: the DAG under a real Airflow deployment whose tasks run
on two Celery workers (`airflow celery worker`, this machine's Redis as the broker, the
metadata database as the result backend), triggered through the REST API as the UI's form
does, polled to success; its results are read from the results database, and its task
instances ran on both workers (the hostname the REST API reports for each)."""

from __future__ import annotations

import collections

import pytest

from tests.stack.helpers import (
    DAG_ID,
    AirflowStack,
    check_stored_results,
    failure_report,
    form_conf,
    trigger,
    unpause,
    wait_finished,
    wait_parsed,
)

pytestmark = pytest.mark.slow

REPETITIONS = 2
RUN_DEADLINE_S = 240


def test_triggered_run_succeeds_on_two_celery_workers(celery_stack: AirflowStack) -> None:
    stack = celery_stack
    assert stack.running_workers() == ["worker-1", "worker-2"]
    wait_parsed(stack)
    unpause(stack)

    response = trigger(stack, form_conf(REPETITIONS))
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    state = wait_finished(stack, run_id, RUN_DEADLINE_S)
    if state != "success":
        pytest.fail(failure_report(stack, run_id, state))

    hosts = stack.task_hosts(DAG_ID, run_id)
    ran = {task: host for task, host in hosts.items() if host is not None}
    print("task instances per worker:", collections.Counter(ran.values()))
    assert ran, hosts
    # Every task that ran, ran on a worker of the stack (the celery workers' own names), and
    # both workers took some: the workers consume one queue, each taking the next message
    # while the other is busy or first in line (Redis serves the longest-waiting consumer).
    assert set(ran.values()) == {"worker-1", "worker-2"}, hosts
    assert stack.running_workers() == ["worker-1", "worker-2"]
    # The stop_server teardowns stopped every benchmark server the run started, whichever
    # worker ran them.
    assert stack.benchmark_servers() == []

    check_stored_results(stack, run_id, REPETITIONS)
