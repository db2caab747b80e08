"""Which DAG runs are still alive (queued or running), asked of Airflow: the judge a sweep
needs before it removes anything a run started.

- From inside a task, through the Task SDK (the execution API): tasks never open the
  metadata database.
- From the `embench` command line, through Airflow's own models on the metadata database,
  as the `airflow` command itself does (run it where Airflow is configured: the scheduler's
  container, or the machine of `embench run`)."""

from __future__ import annotations

from typing import Any

from embench.launch.docker_server import RunIsLive

LIVE_STATES = ["queued", "running"]


def from_task_instance(ti: Any) -> RunIsLive:
    """`ti`: the running task's RuntimeTaskInstance (context["ti"])."""

    def is_live(dag_id: str, run_id: str) -> bool:
        if not dag_id or not run_id:
            return False
        return int(ti.get_dr_count(dag_id=dag_id, run_ids=[run_id], states=LIVE_STATES)) > 0

    return is_live


def from_metadata_db() -> RunIsLive:
    """A snapshot of the live runs in Airflow's metadata database."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(DagRun.dag_id, DagRun.run_id).where(DagRun.state.in_(LIVE_STATES))
        ).all()
    live = {(str(dag_id), str(run_id)) for dag_id, run_id in rows}
    return lambda dag_id, run_id: (dag_id, run_id) in live
