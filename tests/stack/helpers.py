"""A real Airflow deployment on this machine for the full-stack test: PostgreSQL metadata,
LocalExecutor, and the api-server, scheduler and dag-processor as subprocesses, each in its
own process group with its log in a file. Every process the stack starts (and every process
those start: task workers, benchmark servers, load clients) carries a marker variable in its
environment, so that the teardown finds and ends them all, even ones that left the group."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MARKER = "EMBENCH_STACK_TEST_ID"
POOL = "embench_benchmark_host"
USER = "embench-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_short_config(directory: Path) -> Path:
    """config/models.yaml as is; a benchmark.yaml whose scenarios take a second or two."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "config" / "models.yaml", directory / "models.yaml")
    scenario = {"min_requests": 20, "min_duration_s": 1, "max_duration_s": 5}
    benchmark = {
        # Unpausing a DAG whose schedule has fired since its start_date makes the scheduler
        # start that (catchup=False: the latest) nightly run at once, ahead of the triggered
        # one. 29 February: last fired before the DAG's start_date, next in 2028.
        "schedule": "0 2 29 2 *",
        "models": ["all-minilm-l6-v2"],
        "runtimes": ["onnx"],
        "repetitions": 1,
        "warmup": {"requests": 10, "duration_s": 0.5},
        "stability": {
            "window_s": 0.5,
            "windows": 2,
            "tolerance": 0.5,
            "window_requests": 20,
            "max_trials": 3,
        },
        "server": {"threads": 1, "limits": {"cpuset": "0-1", "memory": "4g"}},
        "scenarios": [
            {
                "name": "closed-c1",
                "mode": "closed",
                "concurrency": 1,
                "texts_per_request": 1,
                "length_bucket": "short",
                **scenario,
            },
            {
                "name": "closed-c4",
                "mode": "closed",
                "concurrency": 4,
                "texts_per_request": 1,
                "length_bucket": "short",
                **scenario,
            },
        ],
    }
    # JSON is YAML: no YAML writer needed.
    (directory / "benchmark.yaml").write_text(json.dumps(benchmark, indent=2) + "\n")
    return directory


@dataclass
class AirflowStack:
    """Configure, start, query and stop one Airflow deployment."""

    home: Path
    metadata_url: str  # SQLAlchemy URL of the (empty) metadata database
    extra_env: dict[str, str]
    parallelism: int = 2
    port: int = field(default_factory=free_port)
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    secret: str = field(default_factory=lambda: secrets.token_hex(32))  # JWT and API key
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        passwords = self.home / "passwords.json"
        env = {
            **os.environ,
            **self.extra_env,
            MARKER: self.marker,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__API__SECRET_KEY": self.secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secret,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("AIRFLOW_CONFIG", None)
        return env

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Write the user's password, migrate the metadata database, create the pool."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({USER: self.password}) + "\n")
        self.airflow("db", "migrate", timeout=240)
        self.airflow("pools", "set", POOL, "1", "one benchmark per host", timeout=120)

    def airflow(self, *args: str, timeout: float) -> str:
        done = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
            )
        return done.stdout

    def start(self) -> None:
        commands = {
            "api-server": ["api-server", "--port", str(self.port), "--host", "127.0.0.1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            log = (self.home / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
            log.close()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM each component's process group, then SIGKILL what is left, including
        any process that carries the marker (a benchmark server in its own session)."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        for pid in marked_processes(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def benchmark_servers(self) -> list[str]:
        """Command lines of the inference servers (`python -m server`) still running."""
        found = []
        for pid in marked_processes(self.marker):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-m", b"server"]:
                found.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
        return found

    def logs(self, tail_chars: int = 6000) -> str:
        parts = []
        for name in ("api-server", "scheduler", "dag-processor"):
            path = self.home / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"===== {name} ({path}) =====\n{text[-tail_chars:]}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {process.returncode}\n{self.logs()}"
                )

    # ------------------------------------------------------------------------ REST

    def wait_healthy(self, timeout_s: float) -> dict[str, Any]:
        """Until the metadatabase, scheduler and dag processor all report healthy."""
        last: Any = None

        def healthy() -> bool:
            nonlocal last
            try:
                response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
            except httpx.HTTPError as exc:
                last = exc
                return False
            last = response.text
            if response.status_code != 200:
                return False
            body = response.json()
            return all(
                (body.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            )

        wait_for(healthy, timeout_s, lambda: f"Airflow not healthy: {last}", self.check_alive)
        return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()

    def token(self) -> str:
        """A JWT from the simple auth manager, for the user and password it was given."""
        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": USER, "password": self.password},
                timeout=30,
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        response.raise_for_status()
        return list(response.json()["task_instances"])

    def task_log(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> str:
        """The task's log files as the workers wrote them under AIRFLOW_HOME/logs."""
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        folder = base / f"task_id={ti['task_id']}"
        if ti.get("map_index", -1) >= 0:
            folder = folder / f"map_index={ti['map_index']}"
        files = sorted(folder.glob("attempt=*.log")) if folder.is_dir() else []
        if not files:
            return f"(no log under {folder})"
        return "\n".join(f"--- {f}\n{_render_log(f)[-6000:]}" for f in files)


def _render_log(path: Path) -> str:
    """Task logs are JSON lines: show them as `level event` lines."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            lines.append(raw)
            continue
        line = f"{record.get('level', '')} {record.get('event', '')}"
        if record.get("error_detail"):
            line += f"\n{json.dumps(record['error_detail'], indent=1)[-3000:]}"
        lines.append(line)
    return "\n".join(lines)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def marked_processes(marker: str) -> list[int]:
    """Our processes whose environment carries MARKER=marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    describe: Callable[[], str],
    check: Callable[[], None] | None = None,
    interval_s: float = 2.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f} s: {describe()}")
        time.sleep(interval_s)
