"""One host against two: the same 4-target plan through a real Airflow on the CeleryExecutor
(two Celery workers, this machine's Redis, PostgreSQL), on one test host and on two.

    sudo .venv/bin/python bench/fanout.py [--rounds 2] [--scenario-seconds 10]

What it does, in one run (the rounds interleave 1 host and 2 hosts, so that a change of this
shared machine's speed falls on both):

1. Two test hosts (tests/testhost.py: network namespace, sshd, dockerd), each pinned to one
   core of its own (`server_cpuset` = `client_cpuset` = its core), so a benchmark on one never
   shares a core with the other's, and a target measures the same on either.
2. A real Airflow (api-server, scheduler, dag-processor, two `airflow celery worker`s; see
   tests/stack/helpers.py) with `host.parallel: 2` and the ssh provisioner.
3. A warm-up run over both hosts (ships the images and the model to each; not timed).
4. Per round, the plan {all-minilm-l6-v2} x {onnx} x {fp32, int8} x 2 repetitions = 4 targets,
   triggered through the REST API, once with host.ssh.hosts = [th1] and once with [th1, th2].

It prints each run's wall time (the DAG run's start to end, from Airflow), the ratio of the
one-host wall time to the two-host one per round and their median (the goal: >= 1.7), and per
target and scenario whether the throughput of the two runs agrees within their intervals
(the 95% intervals of each result overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "plugins"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "all-minilm-l6-v2"
VARIANTS = ["fp32", "int8"]
REPETITIONS = 2  # x 2 variants: the 4-target plan
SCENARIOS = ["closed-c1", "closed-c4"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="1-host/2-host pairs (default 2)")
    # The nightly's scenarios last 10-60 s; much shorter ones leave Airflow's own per-task
    # latency (serial: plan, provisioning, judging, report) as most of the wall time.
    parser.add_argument("--scenario-seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    from tests.testhost import missing_requirements, sweep_test_hosts

    missing = missing_requirements()
    if missing:
        print(f"fanout: test hosts need {', '.join(missing)} (run as root)", file=sys.stderr)
        return 2
    sweep_test_hosts()
    work = Path(tempfile.mkdtemp(prefix="embench-fanout-"))
    with Resources(work) as res:
        return run_bench(res, args.rounds, args.scenario_seconds)


class Resources:
    """Databases, test hosts and the stack of this run: all removed at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.databases: list[str] = []
        self.hosts: list[Any] = []
        self.stack: Any = None

    def __enter__(self) -> Resources:
        return self

    def database(self) -> str:
        import sqlalchemy as sa

        from tests.conftest import PG_ADMIN_URL, _admin

        name = f"embench_fanout_{uuid.uuid4().hex[:10]}"
        admin = _admin()
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self.databases.append(name)
        return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)

    def test_hosts(self, n: int) -> list[Any]:
        from tests.testhost import create_test_hosts

        return create_test_hosts(self.work, n, self.hosts)

    def __exit__(self, *exc: object) -> None:
        import sqlalchemy as sa

        from tests.conftest import _admin

        if self.stack is not None:
            self.stack.stop()
        for host in reversed(self.hosts):
            host.destroy()
        admin = _admin()
        with admin.connect() as conn:
            for name in self.databases:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_config(directory: Path, hosts: list[Any], using: int, seconds: float) -> None:
    """The stack's short config on the ssh provisioner with `using` of the hosts listed
    (host.parallel stays 2: the DAG keeps its two lanes; with one host listed the second
    lane has nothing to do). The tasks read it afresh each time they run."""
    from tests.stack.helpers import write_short_config

    write_short_config(directory, hosts, seconds)
    path = directory / "benchmark.yaml"
    bench = json.loads(path.read_text())
    bench["host"]["ssh"]["hosts"] = bench["host"]["ssh"]["hosts"][:using]
    path.write_text(json.dumps(bench, indent=2) + "\n")


def conf() -> dict[str, Any]:
    return {
        "models": [MODEL],
        "runtimes": ["onnx"],
        "variants": VARIANTS,
        "scenarios": SCENARIOS,
        "repetitions": REPETITIONS,
        "provisioner": "ssh",
        "launcher": "docker",
        "fail_on_regression": False,
        "autotune": False,
    }


def timed_run(stack: Any, label: str) -> tuple[str, float]:
    """Trigger the plan, wait for it; (run id, wall seconds from the DAG run's own times)."""
    from tests.stack.helpers import DAG_ID, failure_report, trigger, wait_finished

    response = trigger(stack, conf())
    if response.status_code != 200:
        raise SystemExit(f"fanout: trigger failed: {response.status_code} {response.text}")
    run_id = response.json()["dag_run_id"]
    state = wait_finished(stack, run_id, 1800)
    if state != "success":
        raise SystemExit(f"fanout: {label} run failed:\n{failure_report(stack, run_id, state)}")
    run = stack.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()
    wall = (parse_time(run["end_date"]) - parse_time(run["start_date"])).total_seconds()
    print(f"  {label}: {run_id} {wall:.1f} s", flush=True)
    return run_id, wall


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def results_of(data_dir: Path, run_id: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(variant, repetition, scenario) -> qps, its interval and the host, from the run's result
    documents."""
    from client.result import load_result
    from embench.steps import RunContext

    os.environ["EMBENCH_DATA_DIR"] = str(data_dir)  # where the stack's tasks wrote
    run_dir = RunContext("embedding_benchmark", run_id).run_dir()
    out = {}
    for path in sorted(run_dir.glob("map-*/result.json")):
        result = load_result(path)
        labels = result.metadata.labels
        for s in result.scenarios:
            key = (str(result.metadata.variant), labels.get("repetition", "?"), s.name)
            out[key] = {
                "qps": s.qps,
                "low": s.qps_ci_low,
                "high": s.qps_ci_high,
                "host": labels.get("host", "?"),
                "valid": s.valid,
            }
    return out


def run_bench(res: Resources, rounds: int, seconds: float) -> int:
    from embench.config import load_config
    from embench.paths import cache_dir
    from embench.prepare import prepare_model
    from tests.stack.helpers import CELERY, AirflowStack, unpause, wait_parsed

    hosts = res.test_hosts(2)
    print(f"test hosts: {', '.join(h.address for h in hosts)} (one core each)", flush=True)
    cache = cache_dir()
    config_dir = res.work / "config"
    write_config(config_dir, hosts, 2, seconds)
    prepare_model(load_config(config_dir), MODEL, VARIANTS, cache_root=cache)
    metadata = res.database()
    results_db = res.database()
    import sqlalchemy as sa

    metadata = sa.make_url(metadata).set(drivername="postgresql+psycopg2").render_as_string(False)
    data_dir = res.work / "data"
    res.stack = stack = AirflowStack(
        home=res.work / "airflow-home",
        metadata_url=metadata,
        extra_env={
            "EMBENCH_CONFIG_DIR": str(config_dir),
            "EMBENCH_DATA_DIR": str(data_dir),
            "EMBENCH_CACHE_DIR": str(cache),
            "EMBENCH_DB_URL": results_db,
        },
        executor=CELERY,
        workers=2,
        parallelism=8,
    )
    stack.prepare()
    stack.start()
    stack.wait_healthy(timeout_s=180)
    stack.wait_workers_ready(timeout_s=180)
    wait_parsed(stack)
    unpause(stack)
    print("warm-up over both hosts (ships images and model; not timed)", flush=True)
    timed_run(stack, "warm-up, 2 hosts")

    walls: dict[int, list[float]] = {1: [], 2: []}
    runs: dict[int, list[str]] = {1: [], 2: []}
    for number in range(1, rounds + 1):
        print(f"round {number}", flush=True)
        order = (1, 2) if number % 2 else (2, 1)
        for using in order:
            write_config(config_dir, hosts, using, seconds)
            run_id, wall = timed_run(stack, f"{using} host(s)")
            walls[using].append(wall)
            runs[using].append(run_id)

    ratios = [one / two for one, two in zip(walls[1], walls[2], strict=True)]
    print("\nwall time of the 4-target plan (s), per round:")
    for n, (one, two, ratio) in enumerate(zip(walls[1], walls[2], ratios, strict=True), 1):
        print(f"  round {n}: 1 host {one:.1f}, 2 hosts {two:.1f}, ratio {ratio:.2f}x")
    median = statistics.median(ratios)
    print(f"median ratio 1 host / 2 hosts: {median:.2f}x (goal >= 1.7)")

    print("\nper target, last round: throughput (QPS, 95% interval) on 1 host and on 2 hosts")
    one, two = results_of(data_dir, runs[1][-1]), results_of(data_dir, runs[2][-1])
    agree = 0
    for key in sorted(one):
        a, b = one[key], two.get(key)
        if b is None:
            print(f"  {'/'.join(key)}: missing from the 2-host run")
            continue
        overlap = (
            None
            if None in (a["low"], a["high"], b["low"], b["high"])
            else a["low"] <= b["high"] and b["low"] <= a["high"]
        )
        agree += bool(overlap)
        print(
            f"  {'/'.join(key):<22} 1 host {a['qps']:7.1f} [{fmt(a['low'])}, {fmt(a['high'])}]"
            f" on {a['host']} | 2 hosts {b['qps']:7.1f} [{fmt(b['low'])}, {fmt(b['high'])}]"
            f" on {b['host']} | " + {True: "agree", False: "DIFFER", None: "no interval"}[overlap]
        )
    print(f"{agree} of {len(one)} agree within their intervals")
    return 0


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"fanout: {time.monotonic() - started:.0f} s in all")
    sys.exit(code)
