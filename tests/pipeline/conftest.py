"""Pipeline fixtures: a short-scenario config and a runner for `embench run`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_short_config(
    directory: Path, scenario_seconds: float = 1.0, host: dict | None = None
) -> Path:
    """The shipped config with scenarios shortened to about `scenario_seconds` each (and,
    given, benchmark.yaml's `host:` section)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("models.yaml", "prices.yaml"):
        (directory / name).write_text((REPO_ROOT / "config" / name).read_text())
    bench = yaml.safe_load((REPO_ROOT / "config" / "benchmark.yaml").read_text())
    # one model and one runtime unless a test names others (--models, --runtimes)
    bench["models"] = ["all-minilm-l6-v2"]
    bench["runtimes"] = ["onnx"]
    bench["warmup"] = {"requests": 10, "duration_s": 0.5}
    # short windows, few checks: these tests are about the pipeline, not about stability
    bench["stability"] = {
        "window_s": 0.5,
        "windows": 2,
        "tolerance": 0.5,
        "window_requests": 20,
        "max_trials": 3,
    }
    for scenario in bench["scenarios"]:
        scenario.update(
            min_requests=20, min_duration_s=scenario_seconds, max_duration_s=scenario_seconds + 4
        )
    # no tuning unless a test asks for it (tests/pipeline/test_autotune.py does)
    bench["autotune"] = {**bench.get("autotune", {}), "enabled": False}
    if host is not None:
        bench["host"] = host
    (directory / "benchmark.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
    return directory


@dataclass
class LocalRun:
    returncode: int
    terminal: str  # what the command printed (stdout, then stderr)
    data_dir: Path

    @property
    def airflow_log(self) -> str:
        """The file `embench run` sends Airflow's own logs to (its path: the first line)."""
        first = self.terminal.splitlines()[0] if self.terminal else ""
        path = Path(first.removeprefix("Airflow's logs: ").strip())
        if not first.startswith("Airflow's logs: ") or not path.is_file():
            return ""
        return path.read_text(errors="replace")

    @property
    def output(self) -> str:
        """What the command printed, then Airflow's log: all a test may look for."""
        return self.terminal + "\n" + self.airflow_log

    def run_id(self) -> str:
        """The DAG run id from the summary line `embedding_benchmark <run_id>: <state> in`."""
        for line in self.output.splitlines():
            if line.strip().startswith("embedding_benchmark manual__") and ": " in line:
                return line.strip().split(" ", 1)[1].rsplit(": ", 1)[0]
        raise AssertionError(f"no summary line in the output:\n{self.output[-3000:]}")


@pytest.fixture
def embench_run(
    tmp_path: Path, model_cache: Path, prepared_minilm: dict
) -> Callable[..., LocalRun]:
    """Run `embench run ARGS` (the DAG once, dag.test()) with a short config, the session's
    prepared model cache and a private data dir; `db_url` picks the results database and
    `command` another command of the kind (`embench ab`)."""

    def run(
        *args: str,
        db_url: str,
        scenario_seconds: float = 1.0,
        timeout: float = 600,
        host: dict | None = None,
        command: str = "run",
    ) -> LocalRun:
        config_dir = write_short_config(tmp_path / "config", scenario_seconds, host)
        data_dir = tmp_path / "data"
        env = {
            **os.environ,
            "EMBENCH_CONFIG_DIR": str(config_dir),
            "EMBENCH_DATA_DIR": str(data_dir),
            "EMBENCH_CACHE_DIR": str(model_cache),
            "EMBENCH_DB_URL": db_url,
            "HF_HUB_OFFLINE": "1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "embench.cli", command, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return LocalRun(done.returncode, done.stdout + done.stderr, data_dir)

    return run
