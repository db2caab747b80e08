"""Fixtures of the client's tests: a real test server in a subprocess, and helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class FakeServer:
    def __init__(self, port: int, proc: subprocess.Popen[str]) -> None:
        self.port = port
        self.proc = proc
        self.root = f"http://127.0.0.1:{port}"

    def url(self, **spec: object) -> str:
        """A base URL with its own behaviour and state (a fresh id unless given)."""
        spec.setdefault("id", uuid.uuid4().hex[:12])
        return f"{self.root}/b/" + ",".join(f"{k}={v}" for k, v in spec.items())

    def stats(self, url: str) -> dict:
        with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "PORT n", printed once listening
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield FakeServer(int(line.split()[1]), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def wait_for_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {timeout} s")
        time.sleep(0.05)


def run_in_process(url: str, scenarios: list[dict], out: Path, **kw: object):
    """Run scenarios with the client's own runner in this process (default asyncio loop)."""
    import asyncio

    from client.progress import PlainReporter
    from client.runner import RunRequest, run_benchmark
    from client.scenario import ClientOptions, ScenarioParams, StabilityParams, WarmupParams

    options = kw.pop("options", None) or ClientOptions()
    req = RunRequest(
        url=url,
        scenarios=[ScenarioParams.model_validate(s) for s in scenarios],
        out=out,
        warmup=WarmupParams.model_validate(kw.pop("warmup", {"requests": 0, "duration_s": 0})),
        stability=StabilityParams.model_validate(
            kw.pop(
                "stability",
                # short windows and a loose tolerance: these runs are about the engine, on a
                # shared machine
                {"window_s": 0.5, "window_requests": 20, "windows": 3, "tolerance": 0.5},
            )
        ),
        options=options,
        wait_timeout_s=float(kw.pop("wait_timeout_s", 10)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return asyncio.run(run_benchmark(req, reporter=PlainReporter(quiet=True)))
