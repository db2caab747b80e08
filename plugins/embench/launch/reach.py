"""How the process that runs a task reaches the containers it starts on a Docker daemon.

On the daemon's own machine, a port published on 127.0.0.1 is reachable. Inside a container
(the compose stack's scheduler or a Celery worker) 127.0.0.1 is that container itself, so the
server and the client join a network of the task's own container instead and are reached at
the server container's address on it. A task in a container that the daemon does not know
cannot reach either: that fails at once, with what to set, rather than after minutes of polling.
"""

from __future__ import annotations

import re
from pathlib import Path

from docker import APIClient
from docker.errors import NotFound

from embench.errors import ConfigError, EmbenchError

# Docker bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf from the container's own
# folder under the daemon's data root: the one place inside a container that names its id,
# with or without a private cgroup namespace.
_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\s")
_NETWORK_KEY = "host.docker_network (benchmark.yaml) or EMBENCH_DOCKER_NETWORK"


def own_container_id(mountinfo: str | None = None) -> str | None:
    """The id of the Docker container this process runs in, or None outside one."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    found = _CONTAINER_ID.search(mountinfo)
    return found.group(1) if found else None


def worker_network(cli: APIClient, configured: str | None, docker_url: str) -> str | None:
    """The Docker network the server and client join so that this process reaches them, or
    None when ports published on 127.0.0.1 are reachable from here (configured: `host`)."""
    if configured == "host":
        return None
    if configured:
        try:
            cli.inspect_network(configured)
        except NotFound:
            raise ConfigError(
                f"{_NETWORK_KEY}: no Docker network {configured!r} on {docker_url}"
            ) from None
        return configured
    own = own_container_id()
    if own is None:
        return None  # not in a Docker container: on the daemon's machine
    try:
        info = cli.inspect_container(own)
    except NotFound:
        raise EmbenchError(
            f"this task runs inside container {own[:12]}, which the Docker daemon at "
            f"{docker_url} does not know: a port that daemon publishes is not reachable from "
            f"here. Set {_NETWORK_KEY} to a network this container shares with that daemon's "
            "containers (`host` when this container runs the daemon itself), or use the "
            "process launcher"
        ) from None
    mode = info["HostConfig"].get("NetworkMode") or "default"
    if mode == "host":
        return None  # the host's own loopback: published ports are reachable
    networks = list((info["NetworkSettings"].get("Networks") or {}).keys())
    if mode in networks:
        return str(mode)
    if networks:
        return networks[0]
    raise EmbenchError(
        f"this task's container {own[:12]} has no network (network mode {mode!r}): the "
        "server cannot be reached from it; use the process launcher"
    )
