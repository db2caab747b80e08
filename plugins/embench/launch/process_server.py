"""The server under test as a local process (`python -m server`), for machines without
Docker. Pinned to the configured CPUs; its own session, so a stop takes its children too."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle, wait_healthy

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_cpuset(cpuset: str | None) -> set[int] | None:
    """'0-1,4' -> {0, 1, 4}, limited to the CPUs this process may use."""
    if not cpuset:
        return None
    cpus: set[int] = set()
    for part in cpuset.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    usable = cpus & os.sched_getaffinity(0)
    return usable or None


def start_server_process(
    *,
    model_dir: str,
    environment: dict[str, str],
    labels: dict[str, str],
    log_path: Path,
    cpuset: str | None = None,
    health_timeout_s: float = 180.0,
) -> ServerHandle:
    port = free_port()
    env = {
        **os.environ,
        **environment,
        "EMBENCH_MODEL_DIR": model_dir,
        "EMBENCH_HOST": "127.0.0.1",
        "EMBENCH_PORT": str(port),
    }
    cpus = parse_cpuset(cpuset)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_healthy(url, health_timeout_s, lambda: _exited(process))
    except BaseException as exc:
        stop_server_process(process.pid)
        if isinstance(exc, EmbenchError):
            raise EmbenchError(f"{exc}; server log tail:\n{_tail(log_path)}") from None
        raise
    healthy_after = time.monotonic() - started
    log.info("server process %d healthy at %s after %.1f s", process.pid, url, healthy_after)
    return ServerHandle(
        launcher="process",
        url=url,
        name=f"pid {process.pid}",
        pid=process.pid,
        start_to_healthy_s=round(healthy_after, 3),
        log_path=str(log_path),
        labels=labels,
    )


def stop_server_process(pid: int, grace_s: float = 30.0) -> bool:
    """SIGTERM the server's process group (graceful: in-flight requests finish), SIGKILL
    after `grace_s`. False when it was already gone. Idempotent."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def process_failure(pid: int) -> str | None:
    """Why the server process is gone, or None while it runs."""
    return None if pid and _alive(pid) else f"the server process {pid} is gone"


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
        if reaped:
            return False
    except ChildProcessError:
        pass  # started by another process (a retry's teardown): just probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _exited(process: subprocess.Popen[bytes]) -> str | None:
    code = process.poll()
    return None if code is None else f"the server process exited with code {code}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
