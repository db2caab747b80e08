"""The whole DAG, end to end, on the real model with real launchers, results in the real
PostgreSQL: the process launcher, the docker launcher, and a server killed mid-benchmark."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from embench.store.db import make_engine, session_scope
from embench.store.models import Run, ScenarioRow

pytestmark = pytest.mark.slow
SCENARIOS = "closed-c1,open-r50-poisson"


def stored_runs(db_url: str, run_id: str) -> list[tuple[str, str, int, list[str]]]:
    """(runtime, variant, map index, scenario names) of every stored run of the DAG run."""
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        runs = session.scalars(
            sa.select(Run).where(Run.dag_run_id == run_id).order_by(Run.map_index)
        ).all()
        out = [
            (
                run.runtime,
                run.variant,
                run.map_index,
                sorted(
                    session.scalars(sa.select(ScenarioRow.name).where(ScenarioRow.run_pk == run.id))
                ),
            )
            for run in runs
        ]
    engine.dispose()
    return out


def token_counters(db_url: str, run_id: str) -> list[str]:
    """The kind of token counter each stored run of the DAG run used."""
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        documents = session.scalars(sa.select(Run.document).where(Run.dag_run_id == run_id))
        kinds = [doc["client"]["token_counter"].split(":")[0] for doc in documents]
    engine.dispose()
    return kinds


def images_of(db_url: str, run_id: str) -> list[str]:
    """The server image of every stored run of the DAG run, by map index."""
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        images = session.scalars(
            sa.select(Run.image).where(Run.dag_run_id == run_id).order_by(Run.map_index)
        )
        out = [str(image) for image in images]
    engine.dispose()
    return out


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def containers_of(run_id: str) -> list[str]:
    listed = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=io.embench.run_id={run_id}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_process_launcher_end_to_end(embench_run, pg_database):
    db_url = pg_database()
    run = embench_run(
        "--variants", "fp32,int8", "--scenarios", SCENARIOS, "--launcher", "process", db_url=db_url
    )
    assert run.returncode == 0, run.output[-5000:]
    run_id = run.run_id()
    assert stored_runs(db_url, run_id) == [
        ("onnx", "fp32", 0, ["closed-c1", "open-r50-poisson"]),
        ("onnx", "int8", 1, ["closed-c1", "open-r50-poisson"]),
    ]
    assert "report: " in run.output and "closed-c1" in run.output
    reports = list((run.data_dir / "runs" / "embedding_benchmark").glob("*/report.md"))
    assert len(reports) == 1 and "| int8 | onnx | closed-c1 |" in reports[0].read_text()
    # text lengths were cut with the prepared model's own tokenizer
    assert set(token_counters(db_url, run_id)) == {"tokenizer-json"}


def plant_container(deployment: str, run_id: str) -> str:
    """A container as a run of `deployment` would have left it (a stand-in: sleep)."""
    done = subprocess.run(
        [
            "docker", "run", "-d", "--label", "io.embench.managed=true",
            "--label", f"io.embench.deployment={deployment}",
            "--label", "io.embench.dag_id=embedding_benchmark",
            "--label", f"io.embench.run_id={run_id}",
            "embench-base:bookworm", "sleep", "600",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def container_exists(container_id: str) -> bool:
    done = subprocess.run(["docker", "inspect", container_id], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.docker
def test_docker_launcher_end_to_end_leaves_no_container(embench_run, pg_database, monkeypatch):
    if not docker_available():
        pytest.skip("no Docker daemon")
    deployment = f"e2e-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EMBENCH_DEPLOYMENT", deployment)
    # Left by a run that no longer exists: this deployment's is removed by the run's setup,
    # another deployment's (sharing the daemon) is not.
    stale = plant_container(deployment, "scheduled__gone")
    foreign = plant_container(f"{deployment}-other", "scheduled__gone")
    try:
        db_url = pg_database()
        # one target per runtime (in models.yaml's order), each served by its own image
        run = embench_run(
            "--runtimes", "onnx,openvino,torch", "--variants", "fp32", "--scenarios", SCENARIOS,
            "--launcher", "docker", db_url=db_url,
        )  # fmt: skip
        assert run.returncode == 0, run.output[-5000:]
        run_id = run.run_id()
        scenarios = ["closed-c1", "open-r50-poisson"]
        assert stored_runs(db_url, run_id) == [
            ("onnx", "fp32", 0, scenarios),
            ("torch", "fp32", 1, scenarios),
            ("openvino", "fp32", 2, scenarios),
        ]
        assert images_of(db_url, run_id) == [
            "embench-server:onnx",
            "embench-server:torch",
            "embench-server:openvino",
        ]
        assert "the load client runs in container embench-client-" in run.output
        # the tokenizer travelled into the client's container with the scenario file
        assert token_counters(db_url, run_id) == ["tokenizer-json"] * 3
        assert containers_of(run_id) == []
        assert not container_exists(stale), "the run's setup left a dead run's container"
        assert "left by embedding_benchmark scheduled__gone" in run.output
        assert container_exists(foreign), "the run's setup removed another deployment's container"
    finally:
        subprocess.run(["docker", "rm", "-f", stale, foreign], capture_output=True, check=False)


@pytest.mark.docker
def test_server_killed_mid_benchmark_fails_clearly_then_the_retry_succeeds(
    embench_run, pg_database
):
    if not docker_available():
        pytest.skip("no Docker daemon")
    killed: list[str] = []
    stop = threading.Event()

    def running(name_prefix: str) -> list[str]:
        listed = subprocess.run(
            [
                "docker",
                "ps",
                "--filter",
                "label=io.embench.dag_id=embedding_benchmark",
                "--filter",
                f"name={name_prefix}",
                "--format",
                "{{.Names}}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return listed.stdout.split()

    def kill_server_once_the_client_runs() -> None:
        deadline = time.monotonic() + 400
        while not stop.is_set() and time.monotonic() < deadline:
            if running("embench-client"):
                time.sleep(2.0)  # into the measurement
                for name in running("embench-server"):
                    subprocess.run(["docker", "kill", name], capture_output=True, check=False)
                    killed.append(name)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_server_once_the_client_runs, daemon=True)
    killer.start()
    db_url = pg_database()
    try:
        run = embench_run(
            "--variants",
            "fp32",
            "--scenarios",
            "closed-c1",
            "--launcher",
            "docker",
            db_url=db_url,
            scenario_seconds=6.0,
        )
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "the server container was never killed"
    assert run.returncode == 0, run.output[-5000:]
    assert "stopped during the benchmark (container exited with code 137)" in run.output
    assert "does not answer" in run.output and "starting a new one" in run.output
    run_id = run.run_id()
    assert stored_runs(db_url, run_id) == [("onnx", "fp32", 0, ["closed-c1"])]  # the retry's, once
    assert containers_of(run_id) == []
