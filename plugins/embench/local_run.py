"""`embench run`: the whole DAG once, on this machine, the way `airflow dags test` runs it:
an embedded Airflow home (SQLite metadata) under the data dir, the local provisioner, the
SQLite results store unless EMBENCH_DB_URL says otherwise. Shows the task graph live (each
task and each target's group: preparing, serving, measuring, with elapsed time) while
Airflow's own logs go to a file whose path it prints; then the comparison table and the
report's path, and on failure the failing task's last log lines."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from embench.paths import data_dir

if TYPE_CHECKING:
    from rich.table import Table

    from embench.live_view import RunView
    from embench.report.runtimes import ModelComparison

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "embedding_benchmark"


def airflow_environment() -> dict[str, str]:
    """An Airflow home of our own, so a local run never touches another deployment's."""
    home = Path(os.environ.get("EMBENCH_AIRFLOW_HOME", data_dir() / "airflow"))
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get(
            "AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"
        ),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }


def prepare_airflow(env: dict[str, str]) -> None:
    """A fresh metadata database for each local run (results live in the results store; a
    run left behind by an interrupted earlier one must not be picked up), and the pool.

    A freshly migrated database with the pool is the same file every time for one Airflow
    version, so the first run keeps a copy in the cache dir and later runs start from it
    (two Airflow commands, about 15 s, saved per run)."""
    from embench.config import load_config
    from embench.host_slots import pool_definitions

    database = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    for leftover in ("", "-wal", "-shm", "-journal"):  # SQLite's sidecars replay into a copy
        database.with_name(database.name + leftover).unlink(missing_ok=True)
    config_dir = env.get("EMBENCH_CONFIG_DIR")
    pools = pool_definitions(load_config(Path(config_dir) if config_dir else None).benchmark.host)
    template = _template_path(sorted(pools))
    if template.is_file():
        shutil.copyfile(template, database)
        return
    pools_file = Path(env["AIRFLOW_HOME"]) / "pools.json"
    pools_file.write_text(json.dumps(pools), encoding="utf-8")
    airflow = [sys.executable, "-m", "airflow"]
    full_env = {**os.environ, **env}
    for command in (
        [*airflow, "db", "migrate"],
        [*airflow, "pools", "import", str(pools_file)],
    ):
        done = subprocess.run(command, env=full_env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"embench run: {' '.join(command[2:])} failed")
    template.parent.mkdir(parents=True, exist_ok=True)
    staged = template.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(database, staged)
    staged.replace(template)  # atomic: a concurrent run sees the whole file or none


def _template_path(pools: list[str]) -> Path:
    """Where the migrated database of this Airflow version (and these pools) is kept."""
    from importlib.metadata import version

    from embench.paths import cache_dir

    name = pools[0] if len(pools) == 1 else f"{pools[0]}-x{len(pools)}"
    return cache_dir() / "airflow" / f"metadata-{version('apache-airflow')}-{name}.db"


def conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The DAG params `embench run`'s options give (embench.cli.pipeline defines them)."""
    from embench.cli.options import selection_conf

    conf: dict[str, Any] = selection_conf(args)
    for key in ("repetitions", "provisioner"):
        if getattr(args, key) is not None:
            conf[key] = getattr(args, key)
    if args.fail_on_regression:
        conf["fail_on_regression"] = True
    if args.autotune is not None:
        conf["autotune"] = args.autotune
    return conf


def load_dag(dag_id: str = DAG_ID) -> Any:
    """Parse the DAG folder; the DAG `dag_id`."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            sys.stderr.write(f"{path}: {error}\n")
        raise SystemExit("embench run: the DAG folder does not import")
    return bag.get_dag(dag_id)


def run_dag(conf: dict[str, Any], dag_id: str = DAG_ID) -> tuple[str, str]:
    """Parse the DAG folder, run the DAG once; returns (state, run_id)."""
    dag_run = load_dag(dag_id).test(run_conf=conf, logical_date=None)
    return str(dag_run.state), str(dag_run.run_id)


def run_log_path() -> Path:
    """Where a local run's Airflow logs go: known before the run (and its id) exists."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return data_dir() / "logs" / f"embench-run-{stamp}-{os.getpid()}.log"


def run_with_view(
    conf: dict[str, Any], terminal: IO[str], log_path: Path
) -> tuple[str, str, RunView]:
    """Run the DAG once with the live view on `terminal` (fds 1 and 2 are the log file's
    meanwhile); returns (state, run_id, the view)."""
    from embench import live_view

    dag = load_dag()
    view = live_view.dag_view(dag, terminal, log_path)
    with live_view.showing(view):
        dag_run = dag.test(run_conf=conf, logical_date=None)
        view.finish(
            [(ti.task_id, ti.map_index, str(ti.state)) for ti in dag_run.get_task_instances()]
        )
    return str(dag_run.state), str(dag_run.run_id), view


def print_failure(view: RunView | None, log_path: Path) -> None:
    """The failing task's last log lines (the log's last ones when no task failed)."""
    from embench.console import stdout as console
    from embench.live_view import TAIL_LINES, whole_log_tail

    task, lines = view.failure_tail() if view is not None else ("", whole_log_tail(log_path))
    where = f"{task}'s log" if task else "the log"
    console.rule(f"the last {len(lines)} lines of {where}", style="red")
    for line in lines[-TAIL_LINES:]:
        console.out(line, highlight=False)
    console.rule(style="red")


def main(args: argparse.Namespace) -> int:
    """`embench run`, with the options embench.cli.pipeline parsed."""
    env = airflow_environment()
    os.environ.update(env)  # before Airflow is imported
    from embench import live_view
    from embench.console import stdout as console  # made (terminal or not) before the redirect

    log_path = run_log_path()
    console.print(f"Airflow's logs: {log_path}", highlight=False, soft_wrap=True)
    started = time.monotonic()
    view: RunView | None = None
    state, run_id = "failed", ""
    failure: BaseException | None = None
    with live_view.logs_to_file(log_path) as terminal:  # Airflow is imported in here
        try:
            prepare_airflow(env)
            state, run_id, view = run_with_view(conf_from_args(args), terminal, log_path)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # said once it is closed
            traceback.print_exc()  # into the log
            failure = exc
    if isinstance(failure, KeyboardInterrupt):
        console.print(f"embench run: interrupted; Airflow's logs: {log_path}", highlight=False)
        return 130
    if failure is not None:
        print_failure(view, log_path)
        console.print(
            f"embench run: {type(failure).__name__}: {failure}", highlight=False, soft_wrap=True
        )
        console.print(f"Airflow's logs: {log_path}", highlight=False, soft_wrap=True)
        return 1
    print_summary(run_id, state, time.monotonic() - started)
    if not state.endswith("success"):
        print_failure(view, log_path)
    console.print(f"Airflow's logs: {log_path}", highlight=False, soft_wrap=True)
    return 0 if state.endswith("success") else 1


def scenario_seconds(run_dir: Path) -> float:
    """Time the run's scenarios took, warm-up to end, from the result documents."""
    from client.result import load_result

    total = 0.0
    for path in run_dir.glob("map-*/result.json"):
        for scenario in load_result(path).scenarios:
            total += (scenario.finished_at - scenario.started_at).total_seconds()
    return total


def runtime_table(comparison: ModelComparison) -> Table:
    """A model's runtimes side by side, each figure with its ratio to PyTorch fp32."""
    from rich.table import Table

    from embench.report.text import entry_cells

    against = f" (ratio to {comparison.reference})" if comparison.reference else ""
    table = Table(title=f"{comparison.title}: runtimes compared{against}")
    table.add_column("runtime")
    table.add_column("variant")
    for measure in comparison.measures:
        table.add_column(measure.label, justify="right")
    for entry in comparison.entries:
        table.add_row(entry.runtime, entry.variant, *entry_cells(comparison, entry))
    return table


def print_summary(run_id: str, state: str, seconds: float) -> None:
    from rich.table import Table

    from embench.console import stdout as console
    from embench.report import COLUMNS, cell, collect
    from embench.report.text import peer_sentence
    from embench.steps import RunContext
    from embench.store.db import make_engine, session_scope
    from embench.store.queries import dag_run_ingest_keys

    with session_scope(make_engine()) as session:
        data = collect(session, dag_run_ingest_keys(session, DAG_ID, run_id), run_id)
    table = Table(title=f"{DAG_ID} {run_id}: {state} in {seconds:.0f} s")
    for _, label in COLUMNS:
        table.add_column(label, no_wrap=True)
    for row in data.rows:
        table.add_row(*(cell(key, row.get(key)) for key, _ in COLUMNS))
    console.print(table)
    for comparison in data.comparison:
        if len(comparison.entries) > 1:
            console.print(runtime_table(comparison))
            if sentence := peer_sentence(comparison):
                console.print(sentence, highlight=False)
    report = RunContext(DAG_ID, run_id).run_dir()
    inside = scenario_seconds(report)
    console.print(
        f"wall time {seconds:.0f} s, of which benchmark scenarios (warm-up included) "
        f"{inside:.0f} s; {max(seconds - inside, 0) / seconds:.0%} outside them",
        highlight=False,
    )
    console.print(f"report: {report / 'report.html'}", highlight=False, soft_wrap=True)
    console.print(f"        {report / 'report.md'}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
