"""A real Airflow deployment on this machine for the full-stack test: PostgreSQL metadata,
the api-server, scheduler and dag-processor as subprocesses, each in its own process group
with its log in a file, and either the LocalExecutor or the CeleryExecutor with `workers`
Celery workers (`airflow celery worker`, subprocesses too) on this machine's Redis. Every
process the stack starts (and every process those start: task workers, benchmark servers,
load clients) carries a marker variable in its environment, so that the teardown finds and
ends them all, even ones that left the group."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
import pytest
import redis
import sqlalchemy as sa

from embench.config import load_config
from embench.host_slots import host_pools
from embench.store.db import make_engine, session_scope
from embench.store.models import Run, ScenarioRow
from embench.store.queries import dag_run_ingest_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MARKER = "EMBENCH_STACK_TEST_ID"
USER = "embench-admin"
DAG_ID = "embedding_benchmark"
LOCAL = "LocalExecutor"
CELERY = "CeleryExecutor"
# The Celery stack's broker: this machine's Redis (ENVIRONMENT.md; .ci/run starts it). A
# database of its own, and every key of a stack under a prefix of its own besides (kombu's
# global_keyprefix): stacks of concurrent test sessions share the server, never a queue.
REDIS_URL = os.environ.get("EMBENCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
# What a Celery worker's task processes report as their hostname (the REST API's task
# instance `hostname`): the worker's name, not the machine's, which all workers here share.
WORKER_NAME = "EMBENCH_STACK_WORKER"
_HOSTNAME_MODULE = "embench_stack_worker"
_HOSTNAME_SOURCE = f'''"""[core] hostname_callable of the test stack's Celery workers."""
import os
import re


def hostname() -> str:
    return os.environ["{WORKER_NAME}"]
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_short_config(
    directory: Path, hosts: list[Any] | None = None, scenario_seconds: float = 1.0
) -> Path:
    """config/models.yaml as is; a benchmark.yaml whose scenarios take about
    `scenario_seconds`. With test `hosts` (tests/testhost.py): the ssh provisioner over all
    of them at once, each host on a core of its own with a server of 1 worker x 1 thread."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("models.yaml", "prices.yaml"):
        shutil.copy(REPO_ROOT / "config" / name, directory / name)
    scenario = {
        "min_requests": 20,
        "min_duration_s": scenario_seconds,
        "max_duration_s": scenario_seconds + 4,
    }
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
    if hosts:
        from tests.testhost import ssh_hosts_config

        benchmark["host"] = ssh_hosts_config(hosts, one_core_each=True)
        benchmark["server"] = {"workers": 1, "threads": 1}  # one core per host
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
    executor: str = LOCAL  # or CELERY
    workers: int = 0  # Celery workers (CELERY only): worker-1, worker-2, ...
    worker_concurrency: int = 4  # task slots of each Celery worker
    redis_url: str = REDIS_URL
    # CELERY: seconds without a task heartbeat before the scheduler fails the task instance
    # (Airflow's default, 300, would make a killed-worker test wait five minutes).
    heartbeat_timeout_s: int = 30
    port: int = field(default_factory=free_port)
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    secret: str = field(default_factory=lambda: secrets.token_hex(32))  # JWT and API key
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # workers ended by kill_worker
    _token: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in (LOCAL, CELERY):
            raise ValueError(f"executor must be {LOCAL} or {CELERY}, not {self.executor!r}")
        if self.executor == LOCAL and self.workers:
            raise ValueError("workers are Celery workers: executor=CeleryExecutor")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def queue(self) -> str:
        """The Celery queue of this stack: its tasks' default queue, the one its workers
        consume (never `default`, which another session's workers might serve)."""
        return f"embench-stack-{self.marker}"

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{n}" for n in range(1, self.workers + 1)]

    def celery_env(self) -> dict[str, str]:
        """The CeleryExecutor's settings (names as in the celery provider's provider.yaml and
        Airflow's config.yml), for every component: the scheduler sends, workers consume."""
        backend = self.metadata_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return {
            "AIRFLOW__CORE__EXECUTOR": CELERY,
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.queue}:",
            # acks_late (the provider's default, stated): a message is acknowledged when its
            # task ends, so a worker killed mid-task leaves it unacknowledged in Redis, and
            # Redis hands it out again only after the visibility timeout. Kept long (the
            # provider's default, 24 h, stated) so that a running task is never delivered twice;
            # the task of a killed worker is failed by the scheduler's heartbeat timeout below
            # and retried as a new try (a new message), per the task's retries.
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{backend}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            # A task's supervisor heartbeats every [workers] min_heartbeat_interval (5 s); the
            # scheduler fails a running task instance whose last heartbeat is older than this,
            # checking every detection interval.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout_s),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # A task a killed worker had taken off the queue but not yet started stays
            # `queued`: requeued after this (default 600 s), checked this often (default 120 s).
            # Tasks waiting for a pool slot are `scheduled`, not queued: this does not touch them.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
        }

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
        if self.executor == CELERY:
            env.update(self.celery_env())
        env.pop("AIRFLOW_CONFIG", None)
        return env

    def worker_env(self, name: str) -> dict[str, str]:
        """A Celery worker's: its name as the hostname its task instances report."""
        env = self.env()
        python_path = [str(self.home / "stack-python"), env.get("PYTHONPATH", "")]
        env.update(
            {
                WORKER_NAME: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{_HOSTNAME_MODULE}.hostname",
                "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
            }
        )
        return env

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Write the user's password, migrate the metadata database, create the pools of
        the config's host slots (one slot each)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({USER: self.password}) + "\n")
        if self.executor == CELERY:
            (self.home / "stack-python").mkdir(exist_ok=True)
            (self.home / "stack-python" / f"{_HOSTNAME_MODULE}.py").write_text(_HOSTNAME_SOURCE)
        self.airflow("db", "migrate", timeout=240)
        config_dir = self.extra_env.get("EMBENCH_CONFIG_DIR")
        config = load_config(Path(config_dir) if config_dir else None)
        pools = {
            name: {"slots": 1, "description": "one benchmark per host"}
            for name in host_pools(config.benchmark.host)
        }
        (self.home / "pools.json").write_text(json.dumps(pools, indent=1) + "\n")
        self.airflow("pools", "import", str(self.home / "pools.json"), timeout=120)

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
            self._spawn(name, args, self.env())
        for name in self.worker_names:
            args = [
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--queues",
                self.queue,
                "--concurrency",
                str(self.worker_concurrency),
                # Each worker would serve its task logs on [logging] worker_log_server_port,
                # one port for all on this machine; the api-server reads the log files here.
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ]
            self._spawn(name, args, self.worker_env(name))

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.home / f"{name}.log").open("ab")
        try:
            self.processes[name] = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        finally:
            log.close()

    def wait_workers_ready(self, timeout_s: float) -> None:
        """Until every Celery worker has logged that it is ready (connected to the broker,
        consuming the stack's queue)."""

        def ready() -> bool:
            return all(self._logged_ready(name) for name in self.worker_names)

        def describe() -> str:
            return f"Celery workers not ready:\n{self.logs()}"

        wait_for(ready, timeout_s, describe, self.check_alive, interval_s=1)

    def _logged_ready(self, name: str) -> bool:
        """Celery's `worker-1@HOST ready.` line (with Airflow's structlog suffix)."""
        path = self.home / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return re.search(rf"\b{re.escape(name)}@\S+ ready\.", text) is not None

    def running_workers(self) -> list[str]:
        """The Celery workers whose main process still runs."""
        return [
            name
            for name in self.worker_names
            if name in self.processes and self.processes[name].poll() is None
        ]

    def kill_worker(self, name: str, tree: bool = False) -> list[int]:
        """SIGKILL a Celery worker's process group: its main process, its pool processes and
        the task supervisors in them (their heartbeats stop). With tree, every process that
        descends from it as well: the tasks' own processes (each in a group of its own) and
        what they started (a whole machine lost). Returns the pids signalled."""
        process = self.processes[name]
        pids = {process.pid, *_group_members(process.pid)}
        if tree:
            pids |= _descendants(process.pid)
        self.killed.add(name)
        _signal_group(process.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return sorted(pids)

    def task_hosts(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        """(task_id, map_index) -> the hostname its (latest) try ran on, as the REST API
        reports it: a Celery worker's name here (None: not started)."""
        return {
            (ti["task_id"], ti["map_index"]): ti.get("hostname") or None
            for ti in self.task_instances(dag_id, run_id)
        }

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
        if self.executor == CELERY:
            self._drop_broker_keys()

    def _drop_broker_keys(self) -> None:
        """The stack's keys in Redis (its queue, bindings, unacknowledged messages): all
        under its key prefix."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.queue}:*", count=500))
            if keys:
                client.delete(*keys)
        except redis.RedisError as exc:
            print(f"could not drop the stack's Redis keys ({self.queue}:*): {exc}")
        finally:
            client.close()

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
        for name in ("api-server", "scheduler", "dag-processor", *self.worker_names):
            path = self.home / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"===== {name} ({path}) =====\n{text[-tail_chars:]}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Raise if a component exited (a worker ended by kill_worker excepted)."""
        for name, process in self.processes.items():
            if name not in self.killed and process.poll() is not None:
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


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group id), from /proc/PID/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def _group_members(pgid: int) -> set[int]:
    return {pid for pid, (_, group) in _process_table().items() if group == pgid}


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in _process_table().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


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


# ----------------------------------------------------------- a run through the REST API

MODEL = "all-minilm-l6-v2"
VARIANT = "fp32"
SCENARIOS = ["closed-c1", "closed-c4"]  # write_short_config's
FINISHED = {"success", "failed"}


def form_conf(repetitions: int = 2, **overrides: Any) -> dict[str, Any]:
    """Every param, as the trigger form posts them (its defaults edited)."""
    return {
        "models": [MODEL],
        "variants": [VARIANT],
        "scenarios": SCENARIOS,
        "repetitions": repetitions,
        "provisioner": "local",
        "launcher": "process",
        "fail_on_regression": False,
        **overrides,
    }


def trigger(stack: AirflowStack, conf: dict[str, Any]) -> httpx.Response:
    """POST the body Airflow 3.3's trigger form posts (an empty run id and note are left
    out; no logical date, no data interval)."""
    body = {
        "conf": conf,
        "data_interval_end": None,
        "data_interval_start": None,
        "logical_date": None,
        "partition_key": None,
    }
    return stack.request("POST", f"/dags/{DAG_ID}/dagRuns", json=body)


def wait_parsed(stack: AirflowStack, dag_id: str = DAG_ID) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def parsed() -> bool:
        response = stack.request("GET", f"/dags/{dag_id}")
        if response.status_code == 200:
            found.update(response.json())
            return True
        return False

    def describe() -> str:
        errors = stack.request("GET", "/importErrors").text
        return f"{dag_id} not parsed; import errors: {errors}"

    wait_for(parsed, 120, describe, stack.check_alive)
    return found


def unpause(stack: AirflowStack, dag_id: str = DAG_ID) -> None:
    response = stack.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    assert response.status_code == 200, response.text
    assert response.json()["is_paused"] is False


def wait_finished(stack: AirflowStack, run_id: str, deadline_s: float) -> str:
    """Poll the run until it ends; its state ("success" or "failed"). A run still going at
    the deadline fails the test with the report of its tasks and the components' logs."""
    state = ""

    def finished() -> bool:
        nonlocal state
        response = stack.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        response.raise_for_status()
        state = response.json()["state"]
        return state in FINISHED

    started = time.monotonic()
    try:
        wait_for(finished, deadline_s, lambda: f"run still {state}", stack.check_alive, 3)
    except TimeoutError:
        pytest.fail(failure_report(stack, run_id, f"not finished ({state})"))
    print(f"run {run_id}: {state} in {time.monotonic() - started:.0f} s")
    return state


def failure_report(stack: AirflowStack, run_id: str, state: str) -> str:
    tis = stack.task_instances(DAG_ID, run_id)
    lines = [f"run {run_id} ended {state}; task states:"]
    for ti in tis:
        where = f" on {ti['hostname']}" if ti.get("hostname") else ""
        lines.append(f"  {ti['task_id']}[{ti['map_index']}]: {ti['state']}{where}")
    for ti in tis:
        if ti["state"] not in ("success", "skipped", None):
            lines.append(f"===== log of {ti['task_id']}[{ti['map_index']}] =====")
            lines.append(stack.task_log(DAG_ID, run_id, ti))
    lines.append(stack.logs(3000))
    return "\n".join(lines)


def check_stored_results(stack: AirflowStack, run_id: str, repetitions: int) -> None:
    """The run's results are in the results database: one run per repetition, each with the
    run's ids, model, variant and scenarios; and nothing else is."""
    engine = make_engine(stack.extra_env["EMBENCH_DB_URL"])
    try:
        with session_scope(engine) as session:
            keys = dag_run_ingest_keys(session, DAG_ID, run_id)
            runs = session.scalars(
                sa.select(Run).where(Run.ingest_key.in_(keys)).order_by(Run.map_index)
            ).all()
            assert [r.map_index for r in runs] == list(range(repetitions))
            for stored in runs:
                assert (stored.dag_id, stored.dag_run_id) == (DAG_ID, run_id)
                assert (stored.model, stored.variant) == (MODEL, VARIANT)
                assert stored.trigger_kind == "manual"
                names = session.scalars(
                    sa.select(ScenarioRow.name).where(ScenarioRow.run_pk == stored.id)
                ).all()
                assert sorted(names) == sorted(SCENARIOS)
            # Nothing else: the store holds this run's results only.
            assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == repetitions
    finally:
        engine.dispose()
