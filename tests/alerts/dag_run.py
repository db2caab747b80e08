"""Run the embedding_benchmark DAG once with dag.test() for tests/alerts/test_dag_alerts.py:
`python -m tests.alerts.dag_run RUN_CONF_JSON`, in the environment the test sets up (config,
data dir, results store, Airflow home). The benchmark groups and the host tasks are marked
success (dag.test's mark_success_pattern); in their place tonight's result, 20% below the
seeded history, is stored for this DAG run just before the real detect_regressions runs.
Everything after is the DAG's own: detection, the report, the DAG's callbacks, the alerts.
With a second argument `report-fails`, the report task raises (a run that fails: the run's
state follows its leaf, the report). Prints `RESULT {"state": ..., "run_id": ...}` last."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MARKED = r"(plan_hosts|provision_host|release_host|benchmark)(_\d+)?(\..*)?"


def main() -> int:
    from embench.local_run import DAG_ID, REPO_ROOT, airflow_environment, prepare_airflow

    env = airflow_environment()
    os.environ.update(env)  # before Airflow is imported
    prepare_airflow(env)

    from airflow.dag_processing.dagbag import DagBag

    from embench import steps
    from embench.errors import EmbenchError
    from embench.store.db import make_engine
    from embench.store.ingest import ingest_result
    from tests.store.factory import run_result

    detect = steps.detect_regressions

    def benchmark_then_detect(ctx: steps.RunContext, params: dict[str, Any], config: Any) -> Any:
        tonight = run_result(8, qps=80.5, repetition=0, labels={"run_id": ctx.run_id})
        engine = make_engine()
        ingest_result(engine, tonight)
        engine.dispose()
        return detect(ctx, params, config)

    steps.detect_regressions = benchmark_then_detect
    if sys.argv[2:] == ["report-fails"]:

        def report_fails(*args: Any) -> str:
            raise EmbenchError("cannot write the report: No space left on device")

        steps.report = report_fails
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(DAG_ID)
    run = dag.test(run_conf=json.loads(sys.argv[1]), logical_date=None, mark_success_pattern=MARKED)
    print("RESULT " + json.dumps({"state": str(run.state), "run_id": run.run_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
