"""The server under test as a detached Docker container, through the Docker provider's
low-level client (docker.APIClient, as DockerHook builds it from a connection or URL)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from docker import APIClient
from docker.errors import APIError, NotFound
from docker.types import Mount

from embench.config.schema import ServerLimits
from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle, wait_healthy

log = logging.getLogger(__name__)

CONTAINER_PORT = 8080
MODEL_MOUNT = "/model"
# Every container the pipeline starts carries this label, so a sweep can find leftovers.
MANAGED_LABEL = "io.embench.managed"
# ...and the Airflow deployment that started it: a sweep judges only its own deployment's
# containers, whose runs it can look up (several deployments may share one Docker daemon).
DEPLOYMENT_LABEL = "io.embench.deployment"
RunIsLive = Callable[[str, str], bool]  # (dag id, run id) -> still queued or running
# What a container is for (the server under test, the load client): a retry's client finds an
# earlier try's by it.
ROLE_LABEL = "io.embench.role"
TRY_LABEL = "io.embench.try_number"

# Least privilege, for the server and the client alike: no capabilities at all (the server
# listens on 8080, the client only connects), nothing gained through a setuid file, a
# read-only root filesystem with a tmpfs only where the processes write (/tmp, which is
# also HOME and HF_HOME in the images: Python's tempfile, the HF/torch/OpenVINO caches,
# infinity-emb's state), and bounded processes/threads and memory. /dev/shm is Docker's own
# tmpfs (64 MB) whatever the root. Not executable: no runtime loads code it wrote there.
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=512m"}
# benchmark.yaml's defaults (server.limits); a container never runs without a memory limit
DEFAULT_MEMORY: str = ServerLimits.model_fields["memory"].default
DEFAULT_SERVER_PIDS: int = ServerLimits.model_fields["pids"].default


def hardening(pids_limit: int) -> dict[str, Any]:
    """create_host_config arguments every server and client container gets."""
    return {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": dict(TMPFS),
        "pids_limit": pids_limit,
    }


def deployment_name() -> str:
    """EMBENCH_DEPLOYMENT, else the Airflow home: one name per metadata database."""
    if name := os.environ.get("EMBENCH_DEPLOYMENT"):
        return name
    return "airflow-home:" + os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))


def start_server_container(
    cli: APIClient,
    *,
    image: str,
    name: str,
    model_source: str,
    environment: dict[str, str],
    labels: dict[str, str],
    model_mount_type: str = "bind",
    cpuset: str | None = None,
    cpus: float | None = None,
    mem_limit: str | None = DEFAULT_MEMORY,
    pids_limit: int = DEFAULT_SERVER_PIDS,
    network: str | None = None,
    publish_address: str = "127.0.0.1",
    publish_port: int | None = None,
    reach_address: str = "127.0.0.1",
    health_timeout_s: float = 180.0,
    docker_url: str | None = None,
) -> ServerHandle:
    """Start the container detached and wait for /health, checked from this process.

    - `network`: the container joins that Docker network and is reached at its address there
      (a worker in a container on the same daemon); the client joins it too.
    - otherwise its port is published on the host's `publish_address` and reached at
      `reach_address` (the host's loopback locally, the host's address when remote); the
      client, on the host's network, reaches it on the host's loopback.

    The model is `model_source`: a directory (`bind`) or a volume (`volume`), read-only. The
    container runs with least privilege (see `hardening`); without `mem_limit`, 4g. A
    container that never becomes healthy is removed before the error is raised."""
    _require_image(cli, image)
    remove_container(cli, name)  # a leftover of an earlier try under the same name
    host_config = cli.create_host_config(
        mounts=[Mount(MODEL_MOUNT, model_source, type=model_mount_type, read_only=True)],
        port_bindings=None if network else {CONTAINER_PORT: (publish_address, publish_port)},
        cpuset_cpus=cpuset,
        nano_cpus=int(cpus * 1e9) if cpus else None,
        mem_limit=mem_limit or DEFAULT_MEMORY,
        memswap_limit=mem_limit or DEFAULT_MEMORY,  # no swap beyond it: pressure shows as OOM
        **hardening(pids_limit),
    )
    container = cli.create_container(
        image=image,
        name=name,
        environment={**environment, "EMBENCH_MODEL_DIR": MODEL_MOUNT},
        labels={**labels, MANAGED_LABEL: "true", ROLE_LABEL: "server"},
        ports=[CONTAINER_PORT],
        host_config=host_config,
        networking_config=(
            cli.create_networking_config({network: cli.create_endpoint_config()})
            if network
            else None
        ),
        detach=True,
    )
    container_id = container["Id"]
    try:
        started = time.monotonic()
        cli.start(container_id)
        url, client_url = _server_urls(cli, container_id, network, reach_address)
        wait_healthy(url, health_timeout_s, lambda: _stopped(cli, container_id))
        healthy_after = time.monotonic() - started
    except BaseException as exc:
        tail = _logs_tail(cli, container_id)
        remove_container(cli, container_id)
        if isinstance(exc, EmbenchError):
            raise EmbenchError(f"{exc}; container log tail:\n{tail}") from None
        raise
    log.info("server container %s healthy at %s after %.1f s", name, url, healthy_after)
    return ServerHandle(
        launcher="docker",
        url=url,
        name=name,
        container_id=container_id,
        docker_url=docker_url,
        image=image,
        image_digest=cli.inspect_image(image).get("Id"),
        start_to_healthy_s=round(healthy_after, 3),
        labels=labels,
        network=network,
        client_url=client_url,
    )


def remove_container(cli: APIClient, container: str) -> bool:
    """Force-remove a container by id or name; False when there was none. Idempotent."""
    try:
        cli.remove_container(container, force=True, v=True)
        return True
    except NotFound:
        return False
    except APIError as exc:
        if exc.status_code == 409:  # removal already in progress
            return False
        raise


def remove_earlier_tries(cli: APIClient, role: str, labels: dict[str, str]) -> list[str]:
    """Remove the `role` containers of the same target (every label of `labels` but the try
    number) that earlier tries left: a try killed hard (its worker lost) never reached its
    own cleanup, and its container keeps running. Returns their names. Nothing without the
    run's labels (a bare call would match every run's)."""
    target = {key: value for key, value in labels.items() if key != TRY_LABEL}
    if "io.embench.run_id" not in target:
        return []
    return sweep_containers(cli, {**target, ROLE_LABEL: role})


def sweep_containers(cli: APIClient, labels: dict[str, str]) -> list[str]:
    """Remove every pipeline container carrying all of `labels`; returns their names."""
    filters = [f"{MANAGED_LABEL}=true", *(f"{k}={v}" for k, v in labels.items())]
    removed = []
    for container in cli.containers(all=True, filters={"label": filters}):
        if remove_container(cli, container["Id"]):
            removed.append(container["Names"][0].lstrip("/"))
    return removed


def sweep_stale_containers(
    cli: APIClient, is_live: RunIsLive, deployment: str | None = None, dry_run: bool = False
) -> list[dict[str, str]]:
    """Remove this deployment's containers whose DAG run is no longer queued or running (the
    leftovers of a scheduler that died, or of a stack taken down mid-run); a container of a
    live run is never touched. Returns what was (or, dry, would be) removed."""
    filters = [f"{MANAGED_LABEL}=true", f"{DEPLOYMENT_LABEL}={deployment or deployment_name()}"]
    live: dict[tuple[str, str], bool] = {}
    stale = []
    for container in cli.containers(all=True, filters={"label": filters}):
        labels = container.get("Labels") or {}
        run = (labels.get("io.embench.dag_id", ""), labels.get("io.embench.run_id", ""))
        if run not in live:
            live[run] = is_live(*run)
        if live[run]:
            continue
        name = container["Names"][0].lstrip("/")
        if dry_run or remove_container(cli, container["Id"]):
            stale.append({"name": name, "dag_id": run[0], "run_id": run[1]})
    return stale


def container_failure(cli: APIClient, container_id: str) -> str | None:
    """Why the container is not running (exit code, OOM), or None while it runs."""
    return _stopped(cli, container_id)


def _require_image(cli: APIClient, image: str) -> None:
    if not cli.images(name=image):
        raise EmbenchError(
            f"the server image {image!r} is not on the Docker host; build it with "
            f"server/build_image.sh (or set images.server in benchmark.yaml)"
        )


def _server_urls(
    cli: APIClient, container_id: str, network: str | None, reach_address: str
) -> tuple[str, str]:
    """(URL from this process, URL from the client): the container's address on `network`
    for both, else the published port at `reach_address` and on the host's loopback."""
    for _ in range(50):
        settings = cli.inspect_container(container_id)["NetworkSettings"]
        if network:
            address = ((settings.get("Networks") or {}).get(network) or {}).get("IPAddress")
            if address:
                url = f"http://{address}:{CONTAINER_PORT}"
                return url, url
        else:
            published = (settings.get("Ports") or {}).get(f"{CONTAINER_PORT}/tcp")
            if published:
                port = published[0]["HostPort"]
                return f"http://{reach_address}:{port}", f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    where = f"no address on network {network!r}" if network else "no published host port"
    raise EmbenchError(f"Docker gave container {container_id[:12]} {where}")


def _stopped(cli: APIClient, container_id: str) -> str | None:
    try:
        state: dict[str, Any] = cli.inspect_container(container_id)["State"]
    except NotFound:
        return "the container was removed"
    if state.get("Running"):
        return None
    oom = " (killed: out of memory)" if state.get("OOMKilled") else ""
    return f"container exited with code {state.get('ExitCode')}{oom}"


def _logs_tail(cli: APIClient, container_id: str, lines: int = 30) -> str:
    try:
        raw: bytes | Iterable[bytes] = cli.logs(container_id, tail=lines)
        return raw.decode(errors="replace") if isinstance(raw, bytes) else ""
    except (NotFound, APIError):
        return "(no log: the container is gone)"
