"""The DAG against a benchmark host reached over SSH: a test host (tests/testhost.py) with its
own address, sshd and Docker daemon stands in for a bare-metal box or an instance. The worker
(this process's `embench run`) only orchestrates: images and model are shipped to the host,
the server and the client run there, results come back to the real PostgreSQL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.pipeline.test_pipeline_e2e import stored_runs
from tests.testhost import ssh_hosts_config

pytestmark = [pytest.mark.slow, pytest.mark.docker]
SCENARIOS = "closed-c1"


def ssh_host_config(host, **extra) -> dict:
    """benchmark.yaml's `host:` for the ssh provisioner with one test host (th1), its entry
    updated with `extra`."""
    config = ssh_hosts_config([host])
    config["ssh"]["hosts"][0].update(extra)
    return config


def host_containers(host) -> list[str]:
    return host.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()


def summary_line(output: str) -> str:
    """`embench run`'s "embedding_benchmark RUN_ID: STATE in N s" line."""
    return next(
        line.strip()
        for line in output.splitlines()
        if " in " in line
        and ": " in line
        and line.strip().startswith("embedding_benchmark manual__")
    )


def shipped(output: str) -> list[tuple[str, str]]:
    """(seconds, report) of each ship_to_host in a run's log ("shipped to th1 in 12.3 s: {...}")."""
    return re.findall(r"shipped to \S+ in ([0-9.]+) s: (\{.*?\})\s", output)


def test_a_run_on_an_ssh_host_ships_once_and_leaves_nothing(embench_run, pg_database, test_hosts):
    (host,) = test_hosts(1)
    config = ssh_host_config(host)
    db_url = pg_database()

    first = embench_run("--variants", "fp32", "--scenarios", SCENARIOS, db_url=db_url, host=config)
    assert first.returncode == 0, first.output[-6000:]
    assert stored_runs(db_url, first.run_id()) == [("onnx", "fp32", 0, ["closed-c1"])]
    (ship_first,) = shipped(first.output)
    assert "'model': 'shipped in" in ship_first[1], ship_first
    assert ship_first[1].count("shipped in") == 3, ship_first  # two images and the model
    # The server and the client ran on the host, against the host's address.
    assert f"healthy at http://{host.address}:" in first.output
    assert "the load client runs in container embench-client-" in first.output
    assert "on th1" in first.output
    assert host_containers(host) == []
    assert not (host.work_dir / "embench.lock").exists(), "the host's lock was not released"
    images = host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert {"embench-server:onnx", "embench-client:latest"} <= set(images)
    volumes = host.docker("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert any(v.startswith("embench-model-") for v in volumes)
    # The server's log came back to the worker.
    (server_log,) = (first.data_dir / "runs").rglob("server.log")
    assert "GET /health" in server_log.read_text() or server_log.stat().st_size > 0

    second = embench_run("--variants", "fp32", "--scenarios", SCENARIOS, db_url=db_url, host=config)
    assert second.returncode == 0, second.output[-6000:]
    (ship_second,) = shipped(second.output)
    assert "shipped in" not in ship_second[1], f"the second run shipped again: {ship_second}"
    assert ship_second[1].count("present") == 3, ship_second
    assert host_containers(host) == []
    print(
        f"\n{summary_line(first.output)}\n{summary_line(second.output)}\n"
        f"shipping: first run {ship_first[0]} s {ship_first[1]}; "
        f"second run {ship_second[0]} s {ship_second[1]}\n"
        f"docker ps -a on the test host afterwards:\n{host.docker('ps', '-a').stdout}"
    )


def test_an_unreachable_host_fails_at_once_and_clearly(embench_run, pg_database, test_hosts):
    (host,) = test_hosts(1)
    host.block()
    started = time.monotonic()
    run = embench_run(
        "--variants",
        "fp32",
        "--scenarios",
        SCENARIOS,
        db_url=pg_database(),
        host=ssh_host_config(host),
    )
    elapsed = time.monotonic() - started
    assert run.returncode != 0
    assert "no ssh host is free" in run.output and "unreachable: th1" in run.output
    assert f"root@{host.address}:22" in run.output
    # The task's tries (retries 2), each one attempt with a 3 s connect timeout, not minutes
    # of polling; the report says why nothing was measured.
    attempts = run.output.count("[DAG TEST] starting task_id=provision_host map_index")
    assert 1 <= attempts <= 3, f"{attempts} tries: a retry storm"
    assert elapsed < 240, f"{elapsed:.0f} s"
    (report,) = (run.data_dir / "runs").rglob("report.md")
    assert "could not be provisioned: EmbenchError: no ssh host is free" in report.read_text()


def test_ssh_dropped_mid_benchmark_fails_the_try_and_the_retry_measures_again(
    embench_run, pg_database, test_hosts
):
    (host,) = test_hosts(1)
    dropped = threading.Event()

    def drop_ssh_once_the_client_runs() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            names = host.docker("ps", "--format", "{{.Names}}", check=False).stdout
            if "embench-client-" in names:
                time.sleep(1.5)  # into the measurement
                host.kill_sshd()  # every SSH session to the host ends, the tunnel with them
                time.sleep(1.0)
                host.start_sshd()  # back for the retry
                dropped.set()
                return
            time.sleep(0.2)

    dropper = threading.Thread(target=drop_ssh_once_the_client_runs, daemon=True)
    dropper.start()
    db_url = pg_database()
    run = embench_run(
        "--variants", "fp32", "--scenarios", SCENARIOS, db_url=db_url,
        host=ssh_host_config(host), scenario_seconds=8.0, timeout=900,
    )  # fmt: skip
    dropper.join(timeout=60)
    assert dropped.is_set(), "the connection was never dropped"
    assert run.returncode == 0, run.output[-6000:]
    # The first try failed with the reason; the retry measured again and stored once.
    assert "lost the SSH connection to host th1" in run.output, run.output[-6000:]
    assert stored_runs(db_url, run.run_id()) == [("onnx", "fp32", 0, ["closed-c1"])]
    assert host_containers(host) == []


def test_a_killed_worker_leaves_containers_that_the_next_run_removes(
    embench_run, pg_database, test_hosts, tmp_path: Path
):
    (host,) = test_hosts(1)
    config = ssh_host_config(host)
    db_url = pg_database()
    from tests.pipeline.conftest import write_short_config

    config_dir = write_short_config(tmp_path / "kill-config", 30.0, config)
    env = {
        **__import__("os").environ,
        "EMBENCH_CONFIG_DIR": str(config_dir),
        "EMBENCH_DATA_DIR": str(tmp_path / "data"),
        "EMBENCH_DB_URL": db_url,
        "HF_HUB_OFFLINE": "1",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embench.cli",
            "run",
            "--variants",
            "fp32",
            "--scenarios",
            SCENARIOS,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and "embench-client-" not in " ".join(
            host_containers(host)
        ):
            assert worker.poll() is None, "the run ended before its client started"
            time.sleep(0.5)
        __import__("os").killpg(worker.pid, signal.SIGKILL)  # the worker dies mid-run
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    left = host_containers(host)
    assert any(n.startswith("embench-server-") for n in left), left
    assert (host.work_dir / "embench.lock").exists(), "the dead run's lock should still be there"

    # The next run (a fresh Airflow: the killed run no longer exists) breaks the dead run's
    # lock and removes its containers before it starts its own.
    run = embench_run("--variants", "fp32", "--scenarios", SCENARIOS, db_url=db_url, host=config)
    assert run.returncode == 0, run.output[-6000:]
    assert "breaking" in run.output and "its run is no longer alive" in run.output
    assert "removed embench-server-" in run.output
    assert host_containers(host) == []
