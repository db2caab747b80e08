"""The process launcher stops exactly the servers it started, with real processes: by process
group (the server's children go too), only while the pid still has the start time it was
started with (a reused pid is never signalled), and every server started for the target (a
replacement a retry started, which the teardown's XCom never names) is found and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embench.launch.handle import ServerHandle
from embench.launch.process_server import (
    STATE_FILE,
    ServerProcess,
    start_server_process,
    stop_recorded,
    stop_server_process,
)
from embench.launch.process_site import ProcessSite

# A stand-in for `python -m server`: answers /health, and starts a child (a worker) that
# stays in its process group; it writes the child's pid beside its log.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_CHILD_FILE"] + f".{os.getpid()}", "w") as out:
        out.write(str(child.pid))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    address = (os.environ["EMBENCH_HOST"], int(os.environ["EMBENCH_PORT"]))
    http.server.HTTPServer(address, Health).serve_forever()
    """
)


@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`python -m server` runs the stand-in (found first: the working directory leads
    sys.path under -m). Returns the work dir for the servers' logs."""
    package = tmp_path / "fake" / "server"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_SERVER)
    monkeypatch.chdir(tmp_path / "fake")
    monkeypatch.setenv("FAKE_CHILD_FILE", str(tmp_path / "child"))
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids a test starts: killed afterwards whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def start(work: Path, started: list[int]) -> tuple[ServerHandle, int]:
    """A server through the launcher, and its child's pid."""
    handle = start_server_process(
        model_dir=str(work),
        environment={},
        labels={},
        log_path=work / "server.log",
        health_timeout_s=30,
    )
    assert handle.pid is not None
    started.append(handle.pid)
    child_file = Path(os.environ["FAKE_CHILD_FILE"] + f".{handle.pid}")
    deadline = time.monotonic() + 10
    while not child_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(child_file.read_text())
    started.append(child)
    return handle, child


def sleeper(started: list[int]) -> int:
    """A process in a session (and process group) of its own, as the launcher starts one."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    started.append(process.pid)
    return process.pid


def test_the_teardown_stops_the_server_and_its_children_by_process_group(
    fake_server, started, app_config
):
    handle, child = start(fake_server, started)
    assert handle.pid_start_time == ServerProcess.of(handle.pid).start_time  # field 22
    assert os.getpgid(handle.pid) == handle.pid and os.getpgid(child) == handle.pid
    assert handle.state_file == str(fake_server / STATE_FILE)

    ProcessSite(app_config).stop_server(handle, None)
    assert wait_gone(handle.pid) and wait_gone(child)
    assert not (fake_server / STATE_FILE).exists(), "a stopped server stays recorded"
    ProcessSite(app_config).stop_server(handle, None)  # idempotent


def test_a_pid_whose_start_time_does_not_match_is_not_signalled(started, app_config, tmp_path):
    """The pid of a handle now names another process (reused): it and its group live on."""
    other = sleeper(started)
    actual = ServerProcess.of(other)
    reused = ServerProcess(other, actual.start_time - 1, actual.boot_id)
    assert not reused.is_running()
    assert stop_server_process(reused, grace_s=1) is False
    handle = ServerHandle(
        launcher="process",
        url="http://127.0.0.1:9",
        name=f"pid {other}",
        pid=other,
        pid_start_time=actual.start_time - 1,
        boot_id=actual.boot_id,
    )
    site = ProcessSite(app_config)
    site.stop_server(handle, None)
    # a handle from before start times were recorded: its bare pid is never signalled either
    site.stop_server(ServerHandle(launcher="process", url="", name="", pid=other), None)
    # nor one recorded in a state file with another start time
    state = tmp_path / STATE_FILE
    state.write_text(f'{{"pid": {other}, "start_time": {actual.start_time + 7}}}\n')
    assert stop_recorded(state, grace_s=1) == []
    time.sleep(0.3)
    assert alive(other), "a process whose start time differs from the server's was killed"
    assert "gone" in site.server_failure(handle)
    # ...while with its own start time it is stopped
    assert stop_server_process(actual, grace_s=5) is True
    assert wait_gone(other)


def test_a_replacement_a_retry_started_is_stopped_by_the_teardown(fake_server, started, app_config):
    """run_benchmark's retry found the setup's server dead-or-deaf and started another (as
    steps._server_answering does); the teardown only has the setup's handle, and stops both."""
    first, first_child = start(fake_server, started)
    site = ProcessSite(app_config)
    # the replacement's start stops what is recorded there first (a hard-killed try's)...
    replacement, replacement_child = start(fake_server, started)
    assert wait_gone(first.pid) and wait_gone(first_child)
    assert alive(replacement.pid)
    # ...and the teardown, given only the first handle (its XCom), stops the replacement
    site.stop_server(first, fake_server / "server.log")
    assert wait_gone(replacement.pid) and wait_gone(replacement_child)
    assert not (fake_server / STATE_FILE).exists()


def test_a_recorded_server_whose_leader_died_has_its_orphans_stopped(fake_server, started):
    """The server's main process died (killed hard); its worker still runs in its group."""
    handle, child = start(fake_server, started)
    os.kill(handle.pid, signal.SIGKILL)
    assert wait_gone(handle.pid)
    assert alive(child)
    stopped = stop_recorded(fake_server / STATE_FILE, grace_s=2)
    assert [s.pid for s in stopped] == [handle.pid]
    assert wait_gone(child)
