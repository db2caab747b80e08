"""Least privilege of the docker launcher's containers, on a real Docker daemon:

- the server container of every runtime image (onnx, openvino, torch and the infinity-emb
  peer, all started the same way) runs with every capability dropped, no-new-privileges, a
  read-only root with a tmpfs at /tmp, and pids and memory limits, and still serves (and runs
  the host probe);
- the load client runs as a non-root user with the same hardening, samples the server's
  container through the Docker socket's group, and before it starts, the client containers
  an earlier try of the same target left running are removed (another target's are not)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from docker.errors import NotFound

from client.result import load_result
from embench.bench import write_scenario_file
from embench.config.schema import AutotuneConfig
from embench.hosts.base import Host
from embench.launch import site as site_module
from embench.launch.docker_server import (
    DEFAULT_SERVER_PIDS,
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    ROLE_LABEL,
    TRY_LABEL,
    remove_container,
    start_server_container,
)
from embench.launch.host_probe import PROBE_COMMAND
from embench.launch.site import DockerSite
from embench.tuning import TOKENIZER_FILE, tuning_scenarios
from tests.hosts.conftest import BASE_IMAGE, DOCKER_URL

pytestmark = pytest.mark.docker
MODEL = "all-minilm-l6-v2"


@pytest.fixture
def created(cli) -> Iterator[list[str]]:
    """Containers (ids or names) a test creates; removed afterwards whatever happened."""
    ids: list[str] = []
    yield ids
    for container in ids:
        remove_container(cli, container)


def need_image(cli, image: str) -> None:
    if not cli.images(name=image):
        pytest.skip(f"no {image} (make images)")


def exists(cli, container: str) -> bool:
    try:
        cli.inspect_container(container)
        return True
    except NotFound:
        return False


def run_in(cli, container: str, command: list[str]) -> tuple[int, str]:
    exec_id = cli.exec_create(container, command)["Id"]
    output = cli.exec_start(exec_id).decode(errors="replace")
    return cli.exec_inspect(exec_id)["ExitCode"], output


def assert_hardened(cli, container: str, pids: int, memory: int) -> None:
    """What Docker was told, and what the container's first process really has."""
    inspected = cli.inspect_container(container)
    host = inspected["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), host["CapDrop"]
    assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"] or [])
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"] or {}) == {"/tmp"}
    assert host["PidsLimit"] == pids
    assert host["Memory"] == memory and host["MemorySwap"] == memory
    assert not host.get("Privileged")
    code, status = run_in(cli, container, ["cat", "/proc/1/status"])
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0" * 16 and fields["CapPrm"].strip() == "0" * 16
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[0] != "0", "the container runs as root"
    code, out = run_in(cli, container, ["sh", "-c", "touch /etc/probe"])
    assert code != 0 and "Read-only file system" in out, out
    code, out = run_in(cli, container, ["sh", "-c", "touch /tmp/probe && rm /tmp/probe"])
    assert code == 0, out


# ---------------------------------------------------------------------------------- server

RUNTIMES = ["onnx", "openvino", "torch", "infinity"]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_images_server_runs_with_least_privilege_and_serves(
    cli, created, app_config, model_cache, runtime
):
    from embench.prepare import prepare_targets

    image = app_config.benchmark.images.server(runtime)
    need_image(cli, image)
    (prepared,) = prepare_targets(app_config, MODEL, [(runtime, "fp32")], cache_root=model_cache)
    name = f"embench-server-test-lp-{runtime}-{uuid.uuid4().hex[:8]}"
    created.append(name)
    handle = start_server_container(
        cli,
        image=image,
        name=name,
        model_source=str(prepared.directory),
        environment={"EMBENCH_THREADS": "1", "EMBENCH_WORKERS": "1"},
        labels={},
        health_timeout_s=300,
    )
    assert_hardened(cli, name, DEFAULT_SERVER_PIDS, 4 * 1024**3)
    texts = ["least privilege", "a read-only root filesystem"]
    if runtime == "infinity":
        response = httpx.post(
            f"{handle.url}/v1/embeddings", json={"input": texts, "model": "."}, timeout=120
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 2
    else:
        response = httpx.post(f"{handle.url}/embed", json={"texts": texts}, timeout=120)
        assert response.status_code == 200, response.text
        assert len(response.json()["embeddings"]) == 2
    code, out = run_in(cli, name, PROBE_COMMAND)  # the host probe runs in it too
    assert code == 0 and json.loads(out.strip().splitlines()[-1]), out
    assert cli.inspect_container(name)["State"]["Running"], "the server stopped meanwhile"
    log = cli.logs(name).decode(errors="replace")
    for refusal in ("Read-only file system", "Permission denied"):
        assert refusal not in log, log[-4000:]


# ---------------------------------------------------------------------------------- client


def sleeper(cli, name: str, labels: dict[str, str]) -> str:
    """A container that stands for a client an earlier try left running."""
    container = cli.create_container(BASE_IMAGE, "sleep 300", name=name, labels=labels)
    cli.start(container["Id"])
    return name


@pytest.mark.slow
def test_the_client_runs_unprivileged_and_an_earlier_trys_client_is_removed_first(
    cli, created, app_config, prepared_minilm, tmp_path, monkeypatch
):
    for image in (app_config.benchmark.images.client, "embench-server:onnx", BASE_IMAGE):
        need_image(cli, image)
    token = uuid.uuid4().hex[:8]
    target = {
        MANAGED_LABEL: "true",
        DEPLOYMENT_LABEL: f"test-lp-{token}",
        "io.embench.dag_id": "embench_test_lp",
        "io.embench.run_id": f"manual__{token}",
        "io.embench.map_index": "0",
        "io.embench.slot": "0",
    }
    labels = {**target, TRY_LABEL: "2"}
    client_name = f"embench-client-test-lp-{token}"
    # What earlier tries killed hard left: this target's client under the same name and under
    # another (a renamed or tuning client); another target's client and this target's server
    # are not the client's to remove.
    same_name = sleeper(cli, client_name, {**target, TRY_LABEL: "1", ROLE_LABEL: "client"})
    earlier = sleeper(cli, f"{client_name}-try1", {**target, TRY_LABEL: "1", ROLE_LABEL: "client"})
    other_target = sleeper(
        cli,
        f"{client_name}-other",
        {**target, "io.embench.map_index": "1", TRY_LABEL: "1", ROLE_LABEL: "client"},
    )
    server_role = sleeper(
        cli, f"{client_name}-server", {**target, TRY_LABEL: "1", ROLE_LABEL: "server"}
    )
    created.extend([same_name, earlier, other_target, server_role])

    # the client's container as it was at its end, just before its removal
    seen: dict[str, dict] = {}
    real_remove = site_module.remove_container

    def remove(docker, container):
        try:
            inspected = docker.inspect_container(container)
            if inspected["Name"].lstrip("/") == client_name and inspected["State"]["Running"]:
                seen["before"] = inspected  # the leftover of the earlier try
            elif inspected["Name"].lstrip("/") == client_name:
                seen["client"] = inspected
        except NotFound:
            pass
        return real_remove(docker, container)

    monkeypatch.setattr(site_module, "remove_container", remove)

    fp32 = prepared_minilm["fp32"]
    prepared = {
        "runtime": "onnx",
        "variant": "fp32",
        "model_dir": str(fp32.directory),
        "manifest_sha256": fp32.manifest_sha256,
    }
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(fp32.directory / TOKENIZER_FILE, work / TOKENIZER_FILE)
    space = AutotuneConfig(measure_s=2.0, warmup_s=0.5, concurrency=2)
    scenarios = write_scenario_file(work / "scenarios.json", tuning_scenarios(space, {}))
    out = work / "result.json"
    host = Host("local", "test-lp", DOCKER_URL, "127.0.0.1")
    with DockerSite(host, app_config) as site:
        handle = site.start_server(
            prepared, f"embench-server-test-lp-{token}", labels, work / "server.log"
        )
        created.append(str(handle.container_id))
        try:
            assert_hardened(cli, str(handle.container_id), DEFAULT_SERVER_PIDS, 4 * 1024**3)
            site.run_client(handle, scenarios, out, client_name, labels, timeout_s=300)
        finally:
            site.stop_server(handle, None)

    # item: an earlier try's clients were removed before this one started; others were not
    assert "before" in seen, "the same-name leftover was not removed by the retry's client"
    assert not exists(cli, earlier), "an earlier try's client (another name) still runs"
    assert exists(cli, other_target), "another target's client was removed"
    assert exists(cli, server_role), "a server container was removed as a client"
    assert not exists(cli, client_name)

    # the client ran hardened, as a non-root user with the socket's group only
    client = seen["client"]
    config, host_config = client["Config"], client["HostConfig"]
    assert config["User"] == "10001:10001"
    assert config["Labels"][ROLE_LABEL] == "client"
    assert host_config["CapDrop"] == ["ALL"]
    assert any(o.startswith("no-new-privileges") for o in host_config["SecurityOpt"])
    assert host_config["ReadonlyRootfs"] is True and set(host_config["Tmpfs"]) == {"/tmp"}
    assert host_config["PidsLimit"] == app_config.benchmark.client.pids
    assert host_config["Memory"] == 4 * 1024**3
    socket_gid = str(Path("/var/run/docker.sock").stat().st_gid)
    assert host_config["GroupAdd"] == [socket_gid]
    assert client["State"]["ExitCode"] == 0
    # ...and it still sampled the server's container through the socket
    (scenario,) = load_result(out).scenarios
    assert scenario.qps > 0
    assert scenario.resource_source == "docker" and scenario.resource_samples
