"""The docker launcher's containers on a real Docker daemon: how the worker reaches them (its
own container's network, or ports published on the loopback), and the sweep that removes the
containers of runs no longer alive without touching a live run's or another deployment's."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.errors import NotFound

from embench.errors import ConfigError, EmbenchError
from embench.launch import reach
from embench.launch.docker_server import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    remove_container,
    start_server_container,
    sweep_stale_containers,
)
from tests.hosts.conftest import BASE_IMAGE, DOCKER_URL

pytestmark = pytest.mark.docker


@pytest.fixture
def created(cli) -> Iterator[list[str]]:
    """Ids of containers a test creates; removed afterwards whatever happened."""
    ids: list[str] = []
    yield ids
    for container_id in ids:
        remove_container(cli, container_id)


def exists(cli, container_id: str) -> bool:
    try:
        cli.inspect_container(container_id)
        return True
    except NotFound:
        return False


def test_own_container_id_is_read_from_a_real_containers_mountinfo(cli, tmp_path: Path):
    cidfile = tmp_path / "cid"
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--cidfile",
            str(cidfile),
            BASE_IMAGE,
            "cat",
            "/proc/self/mountinfo",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert reach.own_container_id(done.stdout) == cidfile.read_text().strip()
    assert reach.own_container_id("36 35 98:0 / / rw - ext4 /dev/vda rw\n") is None


def test_outside_a_container_the_published_port_is_used(cli):
    assert reach.own_container_id() is None, "this test must run on the daemon's machine"
    assert reach.worker_network(cli, None, DOCKER_URL) is None


def test_a_configured_network_must_exist(cli):
    with pytest.raises(ConfigError, match=r"host.docker_network .*no Docker network 'nope-"):
        reach.worker_network(cli, f"nope-{uuid.uuid4().hex[:6]}", DOCKER_URL)


def test_a_worker_in_a_container_the_daemon_does_not_know_fails_at_once(cli, monkeypatch):
    foreign = uuid.uuid4().hex * 2  # 64 hex digits: no container of this daemon
    monkeypatch.setattr(reach, "own_container_id", lambda mountinfo=None: foreign)
    with pytest.raises(EmbenchError, match=r"which the Docker daemon at .* does not know"):
        reach.worker_network(cli, None, DOCKER_URL)


def test_a_worker_container_is_answered_with_its_own_network(cli, created, monkeypatch):
    network = f"embench-test-{uuid.uuid4().hex[:8]}"
    cli.create_network(network, driver="bridge")
    try:
        worker = cli.create_container(
            BASE_IMAGE, "sleep 60", host_config=cli.create_host_config(network_mode=network)
        )["Id"]
        created.append(worker)
        monkeypatch.setattr(reach, "own_container_id", lambda mountinfo=None: worker)
        assert reach.worker_network(cli, None, DOCKER_URL) == network
    finally:
        remove_container(cli, created.pop())
        cli.remove_network(network)


def _sleeper(cli, labels: dict[str, str]) -> str:
    container = cli.create_container(
        BASE_IMAGE, "sleep 300", labels={MANAGED_LABEL: "true", **labels}
    )
    cli.start(container["Id"])
    return str(container["Id"])


def test_the_sweep_removes_only_containers_of_dead_runs_of_its_own_deployment(cli, created):
    mine, other = f"test-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex[:8]}"

    def labels(deployment: str, run_id: str) -> dict[str, str]:
        return {
            DEPLOYMENT_LABEL: deployment,
            "io.embench.dag_id": "embedding_benchmark",
            "io.embench.run_id": run_id,
        }

    dead = _sleeper(cli, labels(mine, "manual__gone"))
    live = _sleeper(cli, labels(mine, "manual__running"))
    foreign = _sleeper(cli, labels(other, "manual__gone"))
    created.extend([dead, live, foreign])
    asked: list[tuple[str, str]] = []

    def is_live(dag_id: str, run_id: str) -> bool:
        asked.append((dag_id, run_id))
        return run_id == "manual__running"

    dry = sweep_stale_containers(cli, is_live, deployment=mine, dry_run=True)
    assert [item["run_id"] for item in dry] == ["manual__gone"]
    assert exists(cli, dead), "a dry run removed a container"

    swept = sweep_stale_containers(cli, is_live, deployment=mine)
    assert [(item["dag_id"], item["run_id"]) for item in swept] == [
        ("embedding_benchmark", "manual__gone")
    ]
    assert not exists(cli, dead)
    assert exists(cli, live), "the sweep removed a live run's container"
    assert exists(cli, foreign), "the sweep removed another deployment's container"
    assert sorted(set(asked)) == [
        ("embedding_benchmark", "manual__gone"),
        ("embedding_benchmark", "manual__running"),
    ]


def test_a_server_on_a_network_is_healthy_at_its_address_there(cli, created, prepared_minilm):
    image = "embench-server:onnx"
    if not cli.images(name=image):
        pytest.skip(f"no {image} (scripts/docker/build_images.sh)")
    network = f"embench-test-{uuid.uuid4().hex[:8]}"
    cli.create_network(network, driver="bridge")
    try:
        handle = start_server_container(
            cli,
            image=image,
            name=f"embench-server-test-{uuid.uuid4().hex[:8]}",
            model_source=str(prepared_minilm["fp32"].directory),
            environment={"EMBENCH_THREADS": "1"},
            labels={},
            network=network,
            health_timeout_s=120,
        )
        created.append(str(handle.container_id))
        address = cli.inspect_container(handle.container_id)["NetworkSettings"]["Networks"][
            network
        ]["IPAddress"]
        assert handle.url == f"http://{address}:8080"
        assert handle.network == network
        ports = cli.inspect_container(handle.container_id)["NetworkSettings"]["Ports"] or {}
        assert not any(ports.values()), f"a port was published on the host: {ports}"
    finally:
        for container_id in created:
            remove_container(cli, container_id)
        created.clear()
        cli.remove_network(network)
