"""The server under test as a local process (`python -m server`), for machines without
Docker. Pinned to the configured CPUs; its own session (so its own process group), so a stop
takes its children too.

A pid alone names no process for long (pids are reused), so a server is known by its pid and
its start time (/proc/<pid>/stat, field 22, with the boot's id): a stop signals its process
group only while a process of that pid with that start time leads it. Every start is also
recorded in a state file beside its log (the target's work dir), so that the teardown stops a
replacement that a retry started (its pid never reached the teardown's XCom) and a retried
start stops what a hard-killed earlier try left running."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle, wait_healthy

log = logging.getLogger(__name__)

STATE_FILE = "server-processes.jsonl"  # beside the server's log: one JSON line per start


@dataclass(frozen=True)
class ServerProcess:
    """A started server: its pid (also its process group's and session's id) and the start
    time that tells it apart from a later process given the same pid."""

    pid: int
    start_time: int  # clock ticks after boot (/proc/<pid>/stat, field 22)
    boot_id: str = ""

    @classmethod
    def of(cls, pid: int) -> ServerProcess | None:
        """The process that has `pid` now; None when there is none."""
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat.start_time, _boot_id())

    def is_running(self) -> bool:
        """True while the process that was started (not a later one given its pid) lives."""
        stat = _stat(self.pid)
        return (
            stat is not None
            and stat.start_time == self.start_time
            and self.boot_id in ("", _boot_id())
            and stat.state not in ("Z", "X")
        )


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    session: int
    start_time: int


def _stat(pid: int) -> _Stat | None:
    """/proc/<pid>/stat's state, pgrp, session and starttime (fields 3, 5, 6, 22)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(fields[0], int(fields[2]), int(fields[3]), int(fields[19]))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


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
    state_file = log_path.parent / STATE_FILE
    # A server an earlier, hard-killed try started here (it never reached a teardown).
    for leftover in stop_recorded(state_file):
        log.warning("stopped server process %d left by an earlier try", leftover.pid)
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
    # Our child, not reaped yet: its /proc entry is there whatever it does meanwhile.
    server = ServerProcess.of(process.pid)
    assert server is not None, f"no /proc entry for the server process {process.pid}"
    _record(state_file, server)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_healthy(url, health_timeout_s, lambda: _exited(process))
    except BaseException as exc:
        stop_server_process(server)
        _forget(state_file, [server])
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
        pid_start_time=server.start_time,
        boot_id=server.boot_id,
        state_file=str(state_file),
        start_to_healthy_s=round(healthy_after, 3),
        log_path=str(log_path),
        labels=labels,
    )


def stop_server_process(server: ServerProcess, grace_s: float = 30.0) -> bool:
    """SIGTERM the server's process group (graceful: in-flight requests finish), SIGKILL what
    is left of it after `grace_s`; only while the process that was started leads it (a pid
    reused by another process is never signalled). False when it was gone already.
    Idempotent."""
    if not server.is_running():
        return _kill_orphans(server)
    try:
        os.killpg(server.pid, signal.SIGTERM)  # its leader lives: the group is ours
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(server.pid)
        if not server.is_running():
            break
        time.sleep(0.1)
    if server.is_running():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    _kill_orphans(server)  # children that outlived their leader
    _reap(server.pid)
    return True


def stop_recorded(state_file: Path, grace_s: float = 30.0) -> list[ServerProcess]:
    """Stop every server recorded in `state_file` that still runs (each only if its start
    time matches), then forget them all. Returns those that were stopped."""
    records = _read_records(state_file)
    stopped = [server for server in records if stop_server_process(server, grace_s)]
    _forget(state_file, records)
    return stopped


def process_failure(server: ServerProcess) -> str | None:
    """Why the server process is gone, or None while it runs."""
    _reap(server.pid)
    return None if server.is_running() else f"the server process {server.pid} is gone"


def _group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group `pgid` (any session leader's group included)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _kill_orphans(server: ServerProcess) -> bool:
    """SIGKILL what is left of the server's group once its leader is gone. While any member
    lives, the kernel gives no new process the group's id; a process that has it now with
    another start time leads another group, which is left alone."""
    if server.boot_id not in ("", _boot_id()):
        return False
    leader = _stat(server.pid)
    if leader is not None and leader.start_time != server.start_time:
        return False  # the pid (and the group id) belongs to someone else now
    members = [pid for pid in _group_members(server.pid) if pid != server.pid]
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(members)


def _reap(pid: int) -> None:
    """Collect the exit status of our own child (a zombie otherwise looks alive)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _locked(state_file: Path) -> Iterator[None]:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with open(state_file.with_name(state_file.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_records(state_file: Path) -> list[ServerProcess]:
    try:
        lines = state_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            records.append(ServerProcess(**json.loads(line)))
    return records


def _record(state_file: Path, server: ServerProcess) -> None:
    with _locked(state_file), state_file.open("a") as out:
        out.write(json.dumps(asdict(server)) + "\n")


def _forget(state_file: Path, servers: list[ServerProcess]) -> None:
    with _locked(state_file):
        kept = [s for s in _read_records(state_file) if s not in servers]
        if kept:
            state_file.write_text("".join(json.dumps(asdict(s)) + "\n" for s in kept))
        else:
            state_file.unlink(missing_ok=True)


def _exited(process: subprocess.Popen[bytes]) -> str | None:
    code = process.poll()
    return None if code is None else f"the server process exited with code {code}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
