"""The server and the load client as local processes: the site of this machine when it has no
Docker (and of fast tests). Same methods as DockerSite; nothing to ship, nothing to sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from client.result import ProbeScores
from embench.config import AppConfig
from embench.config.schema import server_environment
from embench.errors import EmbenchError
from embench.launch.client import client_arguments, run_client_process
from embench.launch.docker_server import RunIsLive
from embench.launch.handle import ServerHandle
from embench.launch.host_probe import PROBE_TIMEOUT_S, format_cpuset, parse_probe
from embench.launch.process_server import (
    ServerProcess,
    parse_cpuset,
    process_failure,
    start_server_process,
    stop_recorded,
    stop_server_process,
)


class ProcessSite:
    launcher = "process"

    def __init__(self, config: AppConfig) -> None:
        self.config = config

    def ship(self, prepared: dict[str, Any]) -> dict[str, Any]:
        return {"images": {}, "model": "local", "seconds": 0.0}

    def start_server(
        self,
        prepared: dict[str, Any],
        name: str,
        labels: dict[str, str],
        log_path: Path,
        *,
        settings: dict[str, Any] | None = None,
    ) -> ServerHandle:
        """`settings` (the server's, by name) replace benchmark.yaml's `server:` settings."""
        if prepared["runtime"] == "infinity":
            raise EmbenchError(
                "the infinity-emb peer runs from its image (embench-server:infinity): "
                "benchmark it with the docker launcher"
            )
        server = self.config.benchmark.server
        return start_server_process(
            model_dir=prepared["model_dir"],
            environment=server.environment() if settings is None else server_environment(settings),
            labels=labels,
            log_path=log_path,
            cpuset=server.limits.cpuset,
        )

    def server_failure(self, handle: ServerHandle) -> str | None:
        server = _server_process(handle)
        return process_failure(server) if server else f"the server process {handle.pid} is gone"

    def host_fingerprint(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """This machine's environment fingerprint, from the load client as it runs here."""
        done = subprocess.run(
            [sys.executable, "-m", "client", "fingerprint"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise EmbenchError(f"the client's fingerprint failed: {done.stderr[-2000:]}")
        return dict(json.loads(done.stdout))

    def server_build(self, prepared: dict[str, Any]) -> str:
        """The runtime's libraries as installed here (what a server process runs with)."""
        from server.runtime import library_versions

        versions = library_versions(prepared["runtime"])
        return "process:" + ",".join(f"{k}=={v}" for k, v in sorted(versions.items()))

    def server_cpus(self) -> set[int] | None:
        """The CPUs start_server pins the server to (the configured cpuset, as far as this
        process may use it); None when the server runs unpinned."""
        return parse_cpuset(self.config.benchmark.server.limits.cpuset)

    def server_cpuset(self, handle: ServerHandle) -> str | None:
        cpus = self.server_cpus()
        return format_cpuset(cpus) if cpus else None

    def probe_host(self, handle: ServerHandle) -> ProbeScores:
        """The host probe as a process pinned to the server's CPUs (unpinned when the server
        is). Run it while the server is idle."""
        cpus = self.server_cpus()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "server.probe"],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=PROBE_TIMEOUT_S,
                check=False,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        except subprocess.TimeoutExpired:
            raise EmbenchError(f"the host probe ran past {PROBE_TIMEOUT_S:.0f} s") from None
        return parse_probe(done.returncode, done.stdout, done.stderr)

    def run_client(
        self,
        handle: ServerHandle,
        scenarios: Path,
        out: Path,
        name: str,
        labels: dict[str, str],
        timeout_s: float,
    ) -> None:
        args = client_arguments(handle, str(scenarios), str(out))
        run_client_process(args, out.parent / "client.log", timeout_s)

    def stop_server(self, handle: ServerHandle, log_path: Path | None) -> None:
        """Stop the handle's server and every other one recorded for the target (a
        replacement a retry started), each only while its pid has its start time."""
        server = _server_process(handle)
        if server is not None:
            stop_server_process(server)
        if handle.state_file:
            stop_recorded(Path(handle.state_file))
        if log_path is not None and handle.log_path and Path(handle.log_path) != log_path:
            shutil.copyfile(handle.log_path, log_path)

    def sweep_stale(self, run_is_live: RunIsLive) -> list[dict[str, str]]:
        return []

    def sweep_run(self, run_labels: dict[str, str]) -> list[str]:
        return []


def _server_process(handle: ServerHandle) -> ServerProcess | None:
    """The handle's process, by pid and start time; None for a handle without a start time
    (its pid alone could name any process by now: it is never signalled)."""
    if not handle.pid or handle.pid_start_time is None:
        return None
    return ServerProcess(handle.pid, handle.pid_start_time, handle.boot_id or "")
