"""What `embench run` prints: the tasks as they start and end (plain lines without a
terminal), the final table, and none of Airflow's own logs, which go to a file whose path it
prints first and last; on failure, the failing task's last log lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
AIRFLOW_LINES = ("[DAG TEST]", "Task instance state updated", "::group::", "[info     ]")
LOG_LINE = re.compile(r"^Airflow's logs: (\S+)$", re.MULTILINE)


def log_paths(output: str) -> list[Path]:
    return [Path(p) for p in LOG_LINE.findall(output)]


def test_run_shows_the_tasks_and_sends_airflow_logs_to_a_file(embench_run, tmp_path):
    run = embench_run(
        "--variants",
        "fp32",
        "--scenarios",
        "closed-c1",
        "--launcher",
        "process",
        db_url=f"sqlite:///{tmp_path / 'results.db'}",
    )
    assert run.returncode == 0, run.terminal[-5000:]
    for noise in AIRFLOW_LINES:
        assert noise not in run.terminal, run.terminal
    # a line per task start and end, the benchmark group named by its target
    target = "benchmark all-minilm-l6-v2 onnx fp32"
    for line in (
        "plan: running",
        "plan: success in",
        f"{target}: preparing (prepare_model)",
        f"{target}: measuring (run_benchmark)",
        f"{target}: run_benchmark success in",
        f"{target}: store_results success in",
        "report: success in",
    ):
        assert line in run.terminal, run.terminal
    # the final table and its summary line, as before
    assert run.run_id().startswith("manual__")
    assert "report: " in run.terminal and "closed-c1" in run.terminal
    # the log's path first and last; the file holds what the terminal did not get
    paths = log_paths(run.terminal)
    assert len(paths) == 2 and paths[0] == paths[1], run.terminal
    assert run.terminal.splitlines()[0].startswith("Airflow's logs: ")
    assert run.terminal.rstrip().splitlines()[-1].startswith("Airflow's logs: ")
    log = paths[0].read_text()
    assert paths[0].is_relative_to(run.data_dir)
    assert "[DAG TEST] starting task_id=plan" in log
    assert "Task instance state updated" in log and "::group::" in log
    assert "\x1b[" not in log  # no terminal colours in the file


def test_failed_run_prints_the_failing_tasks_last_log_lines(embench_run, tmp_path):
    # no int8 build of the PyTorch runtime: the plan fails at once (provision_host, which
    # plans too, fails after its retries)
    run = embench_run(
        "--runtimes",
        "torch",
        "--variants",
        "int8",
        "--launcher",
        "process",
        db_url=f"sqlite:///{tmp_path / 'results.db'}",
    )
    assert run.returncode == 1, run.terminal[-5000:]
    assert "plan: failed in" in run.terminal
    assert "benchmark: upstream failed" in run.terminal
    for noise in ("[DAG TEST]", "Task instance state updated", "::group::"):
        assert noise not in run.terminal.split("lines of plan's log")[0], run.terminal
    assert run.run_id().startswith("manual__")  # the table stays
    title = re.search(r"the last (\d+) lines of plan's log", run.terminal)
    assert title and int(title.group(1)) == 30, run.terminal
    shown = run.terminal[title.end() :]
    assert "ConfigError: DAG params select no (model, runtime, variant) to benchmark" in shown
    assert "recorded the failure of plan" in shown
    paths = log_paths(run.terminal)
    assert len(paths) == 2 and paths[0] == paths[1], run.terminal
    assert run.terminal.rstrip().splitlines()[-1] == f"Airflow's logs: {paths[0]}"
    log = paths[0].read_text()
    assert "Task failed with exception" in log and "ConfigError" in log
