"""`embench containers sweep` against a real Airflow metadata database (the embedded one of
`embench run`): a container of a run that Airflow has queued stays, one of a run Airflow does
not know is removed, another deployment's is never looked at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.pipeline.test_pipeline_e2e import container_exists, docker_available, plant_container

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_containers_sweep_asks_airflow_which_runs_are_alive(tmp_path: Path) -> None:
    if not docker_available():
        pytest.skip("no Docker daemon")
    deployment = f"cli-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "EMBENCH_DATA_DIR": str(tmp_path / "data"),
        "EMBENCH_DEPLOYMENT": deployment,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, check=False, timeout=300
        )

    airflow = [sys.executable, "-m", "airflow"]
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        done = run(*airflow, *command)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    queued = run(*airflow, "dags", "trigger", "embedding_benchmark", "--run-id", "manual__alive")
    assert queued.returncode == 0, queued.stdout[-2000:] + queued.stderr[-2000:]

    alive = plant_container(deployment, "manual__alive")
    gone = plant_container(deployment, "manual__gone")
    foreign = plant_container(f"{deployment}-other", "manual__gone")
    embench = [sys.executable, "-m", "embench.cli"]
    try:
        dry = run(*embench, "containers", "sweep", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert [c["run_id"] for c in json.loads(dry.stdout)["containers"]] == ["manual__gone"]
        assert container_exists(gone), "a dry run removed a container"

        swept = run(*embench, "containers", "sweep", "--json")
        assert swept.returncode == 0, swept.stderr[-3000:]
        report = json.loads(swept.stdout)
        assert report["deployment"] == deployment
        assert [c["run_id"] for c in report["containers"]] == ["manual__gone"]
        assert not container_exists(gone)
        assert container_exists(alive), "the sweep removed the container of a queued run"
        assert container_exists(foreign), "the sweep removed another deployment's container"
    finally:
        subprocess.run(["docker", "rm", "-f", alive, gone, foreign], capture_output=True)
