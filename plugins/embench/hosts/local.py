"""The local provisioner: this machine, its Docker daemon, nothing to create or destroy."""

from __future__ import annotations

import os
import socket

from embench.hosts.base import Host

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


class LocalProvisioner:
    kind = "local"

    def __init__(self, docker_url: str | None = None, address: str = "127.0.0.1") -> None:
        self.docker_url = docker_url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self.address = address

    def acquire(self, labels: dict[str, str]) -> Host:
        return Host("local", socket.gethostname(), self.docker_url, self.address)

    def release(self, host: Host) -> None:
        return None

    def sweep_dead(self, run_is_live: object) -> list[str]:
        return []
