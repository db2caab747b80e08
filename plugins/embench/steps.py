"""Task bodies of the embedding_benchmark DAG: each task calls one function here, so every
step runs and is tested without a scheduler. Values passed between tasks are plain dicts."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client.scenario import RunLabels
from embench.bench import scenario_file, write_scenario_file
from embench.config import AppConfig
from embench.config.schema import ALL_VARIANTS
from embench.errors import ConfigError, EmbenchError
from embench.hosts import Host, make_provisioner
from embench.launch.docker_server import RunIsLive
from embench.launch.handle import ServerHandle
from embench.paths import data_dir
from embench.provenance import git_sha

log = logging.getLogger(__name__)

Launcher = Literal["auto", "docker", "process"]


class RegressionFound(EmbenchError):
    """The run regressed and the run's settings say that fails it."""


@dataclass(frozen=True)
class RunContext:
    """Who is running: the keys that make results idempotent across retries."""

    dag_id: str
    run_id: str
    trigger: str = "manual"  # scheduled | manual
    map_index: int = -1
    try_number: int = 1

    def labels(self) -> dict[str, str]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "map_index": str(self.map_index),
            "try_number": str(self.try_number),
            "trigger": self.trigger,
        }

    def container_labels(self) -> dict[str, str]:
        """Docker labels: deployment, dag and run (for the sweeps), map index (for the task)."""
        from embench.launch.docker_server import DEPLOYMENT_LABEL, deployment_name

        labels = {f"io.embench.{key}": value for key, value in self.labels().items()}
        return {**labels, DEPLOYMENT_LABEL: deployment_name()}

    def run_labels(self) -> dict[str, str]:
        """The labels every task of the run shares (a sweep removes what carries them)."""
        return {"io.embench.dag_id": self.dag_id, "io.embench.run_id": self.run_id}

    def work_dir(self) -> Path:
        """Scenario file, result and logs of this (run, map index), under the data dir."""
        safe_run = re.sub(r"[^A-Za-z0-9._-]+", "_", self.run_id)
        return data_dir() / "runs" / self.dag_id / safe_run / f"map-{self.map_index}"


class RunParams(BaseModel):
    """The DAG's params as a trigger form sends them, checked against the config."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    variants: list[str] = Field(default_factory=list)  # empty: each model's own list
    scenarios: list[str] = Field(default_factory=list)  # empty: all
    repetitions: int = Field(default=1, ge=1, le=20)
    provisioner: Literal["local", "ec2"] = "local"
    launcher: Launcher = "auto"
    fail_on_regression: bool = False


def default_params(config: AppConfig) -> dict[str, Any]:
    bench = config.benchmark
    return {
        "models": list(bench.models),
        "variants": list(bench.variants or []),
        "scenarios": [s.name for s in bench.scenarios],
        "repetitions": bench.repetitions,
        "provisioner": bench.host.provisioner,
        "launcher": "auto",
        "fail_on_regression": bench.regression.on_regression == "fail",
    }


def parse_params(params: dict[str, Any], config: AppConfig) -> RunParams:
    try:
        parsed = RunParams.model_validate({k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"DAG params: {where}: {first['msg']}") from None
    for model_id in parsed.models:
        config.model(model_id)  # names the known ids when unknown
    for variant in parsed.variants:
        if variant not in ALL_VARIANTS:
            raise ConfigError(f"DAG params: unknown variant {variant!r}")
    known = {s.name for s in config.benchmark.scenarios}
    for name in parsed.scenarios:
        if name not in known:
            raise ConfigError(f"DAG params: unknown scenario {name!r}")
    return parsed


def plan_targets(params: dict[str, Any], config: AppConfig) -> list[dict[str, Any]]:
    """One target per (model, variant, repetition): the map of the benchmark task group."""
    run = parse_params(params, config)
    targets = []
    for model_id in run.models:
        model = config.model(model_id)
        variants = [v for v in run.variants if v in model.variants] if run.variants else None
        for variant in variants or model.variants:
            for repetition in range(1, run.repetitions + 1):
                targets.append(
                    {
                        "model": model_id,
                        "variant": variant,
                        "runtime": "onnx",
                        "repetition": repetition,
                        "scenarios": run.scenarios,
                    }
                )
    if not targets:
        raise ConfigError("DAG params select no (model, variant) to benchmark")
    return targets


def resolve_launcher(requested: str, docker_url: str) -> str:
    """`auto`: docker when a daemon answers at docker_url, else process."""
    if requested != "auto":
        return requested
    from docker import APIClient
    from docker.errors import DockerException

    try:
        APIClient(base_url=docker_url, timeout=5).ping()
        return "docker"
    except (DockerException, OSError):
        log.info("no Docker daemon at %s: using the process launcher", docker_url)
        return "process"


# ------------------------------------------------------------------------------- hosts


def provision_host(
    params: dict[str, Any], ctx: RunContext, config: AppConfig, run_is_live: RunIsLive
) -> dict[str, Any]:
    """Acquire the host, choose the launcher and how this worker reaches the containers it
    starts there (failing at once when it cannot), and remove containers that runs no longer
    alive left on it. A failure after the host was acquired releases it."""
    run = parse_params(params, config)
    provisioner = make_provisioner(config.benchmark.host, run.provisioner, config.config_dir)
    host = provisioner.acquire(ctx.labels())
    try:
        launcher = resolve_launcher(run.launcher, host.docker_url)
        network = None
        if launcher == "docker":
            from embench.launch.docker_server import sweep_stale_containers
            from embench.launch.reach import worker_network

            cli = docker_client(host.docker_url)
            configured = (
                os.environ.get("EMBENCH_DOCKER_NETWORK") or config.benchmark.host.docker_network
            )
            network = worker_network(cli, configured, host.docker_url)
            for stale in sweep_stale_containers(cli, run_is_live):
                log.warning(
                    "removed %s, left by %s %s", stale["name"], stale["dag_id"], stale["run_id"]
                )
    except BaseException:
        provisioner.release(host)
        raise
    log.info(
        "host %s (%s), launcher %s, network %s",
        host.name,
        host.provisioner,
        launcher,
        network or "host",
    )
    return {"host": host.to_dict(), "launcher": launcher, "docker_network": network}


def release_host(provisioned: dict[str, Any] | None, ctx: RunContext, config: AppConfig) -> None:
    """Remove every server container of the run still on the host, then release the host."""
    if not provisioned:
        return  # provisioning failed before a host existed
    host = Host.from_dict(provisioned["host"])
    if provisioned["launcher"] == "docker":
        from embench.launch.docker_server import sweep_containers

        removed = sweep_containers(docker_client(host.docker_url), ctx.run_labels())
        if removed:
            log.warning("removed leftover containers: %s", ", ".join(removed))
    make_provisioner(config.benchmark.host, host.provisioner, config.config_dir).release(host)


def docker_client(docker_url: str) -> Any:
    from airflow.providers.docker.hooks.docker import DockerHook

    return DockerHook(docker_conn_id=None, base_url=docker_url).api_client


# ---------------------------------------------------------------------- model and server


def prepare_target(target: dict[str, Any], config: AppConfig) -> dict[str, Any]:
    from embench.prepare import prepare_model

    (prepared,) = prepare_model(config, target["model"], [target["variant"]])
    return {
        **target,
        "model_dir": str(prepared.directory),
        "manifest_sha256": prepared.manifest_sha256,
        "cache_hit": prepared.cache_hit,
        "parity_mean_cosine": prepared.manifest.parity.mean_cosine,
    }


def server_name(ctx: RunContext) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{ctx.dag_id}-{ctx.run_id}")[-80:].strip("-.")
    return f"embench-server-{safe}-{ctx.map_index}"


def start_process_server(
    prepared: dict[str, Any], ctx: RunContext, config: AppConfig
) -> dict[str, Any]:
    from embench.launch.process_server import start_server_process

    server = config.benchmark.server
    handle = start_server_process(
        model_dir=prepared["model_dir"],
        environment=server.environment(),
        labels=ctx.labels(),
        log_path=ctx.work_dir() / "server.log",
        cpuset=server.limits.cpuset,
    )
    return handle.to_dict()


def stop_server(handle: dict[str, Any] | None, ctx: RunContext) -> None:
    """Teardown: remove the container (by id, and by name for a replacement a retry started)
    or stop the process. Safe when start_server failed before a server existed."""
    if not handle:
        return
    server = ServerHandle.from_dict(handle)
    if server.launcher == "docker":
        from embench.launch.docker_server import remove_container

        cli = docker_client(server.docker_url or "unix:///var/run/docker.sock")
        for container in {server.container_id, server.name} - {None}:
            remove_container(cli, str(container))
    elif server.pid:
        from embench.launch.process_server import stop_server_process

        stop_server_process(server.pid)


# ---------------------------------------------------------------------------- benchmark


def write_run_scenarios(
    target: dict[str, Any], ctx: RunContext, config: AppConfig, server: ServerHandle
) -> Path:
    from embench.report import COLD_START_LABEL

    extra = {"repetition": str(target["repetition"])}
    if server.start_to_healthy_s is not None:
        extra[COLD_START_LABEL] = str(server.start_to_healthy_s)
    labels = RunLabels(
        model=target["model"],
        variant=target["variant"],
        runtime=target["runtime"],
        git_sha=git_sha(),
        labels={**ctx.labels(), **extra},
    )
    document = scenario_file(config, target["scenarios"] or None, labels)
    return write_scenario_file(ctx.work_dir() / "scenarios.json", document)


def result_path(ctx: RunContext) -> Path:
    return ctx.work_dir() / "result.json"


# ------------------------------------------------------------------------ store, judge


def store_result(path: str, config: AppConfig) -> dict[str, Any]:
    """Ingest the result (idempotent by dag id, run id and map index)."""
    from embench.store.db import make_engine, upgrade_to_head
    from embench.store.ingest import ingest_paths

    engine = make_engine()
    upgrade_to_head(engine)
    (report,) = ingest_paths(engine, [Path(path)])
    log.info("stored %s: %d scenario(s)", report.ingest_key, report.scenarios)
    return {"ingest_key": report.ingest_key, "run_pk": report.run_pk, "result_path": path}


def detect_regressions(
    stored: dict[str, Any], params: dict[str, Any], config: AppConfig
) -> list[dict[str, Any]]:
    from embench.store.db import make_engine
    from embench.store.detect import detect_regressions as detect
    from embench.store.detect import settings_from_config

    regression = config.benchmark.regression
    verdicts = detect(
        make_engine(), stored["ingest_key"], settings_from_config(regression), regression.metrics
    )
    regressed = [v for v in verdicts if v["status"] == "regressed"]
    for verdict in regressed:
        log.warning("REGRESSED %s %s", verdict["metric"], verdict["reason"])
    if regressed and parse_params(params, config).fail_on_regression:
        raise RegressionFound(f"{len(regressed)} regression(s) in {stored['ingest_key']}")
    return verdicts


# ------------------------------------------------------------------------------- report


def report(ctx: RunContext) -> str:
    """Write the run's comparison report from what the store holds for this DAG run; returns
    its path. Runs even when some (model, variant) groups failed: what was stored is shown."""
    from embench.report import collect, write_report
    from embench.store.db import make_engine, session_scope, upgrade_to_head
    from embench.store.queries import dag_run_ingest_keys

    engine = make_engine()
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        keys = dag_run_ingest_keys(session, ctx.dag_id, ctx.run_id)
        data = collect(session, keys, f"Embedding benchmark {ctx.dag_id} / {ctx.run_id}")
    path, html_path = write_report(ctx.work_dir().parent, data)  # report.md, report.html
    log.info(
        "report: %s and %s (%d stored run(s))\n%s",
        path,
        html_path,
        len(keys),
        path.read_text(encoding="utf-8"),
    )
    return str(path)
