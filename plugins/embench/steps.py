"""Task bodies of the embedding_benchmark DAG: each task calls one function here, so every
step runs and is tested without a scheduler. Values passed between tasks are plain dicts."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client.scenario import RunLabels
from embench.bench import scenario_file, write_scenario_file
from embench.config import AppConfig
from embench.config.schema import ALL_RUNTIMES, ALL_VARIANTS, EXTERNAL_RUNTIME
from embench.cost import host_price, price_labels
from embench.errors import ConfigError, EmbenchError, params_error
from embench.host_slots import SLOT_LABEL, assign, slot_of_task, slots_in_use, targets_of
from embench.hosts import Host, make_provisioner
from embench.launch.docker_server import RunIsLive, deployment_name
from embench.launch.external import external_handle
from embench.launch.handle import ServerHandle
from embench.launch.host_probe import HostCalibration
from embench.launch.site import DockerSite, Site, open_site
from embench.paths import data_dir
from embench.peers import client_options
from embench.provenance import git_sha
from embench.run_outcome import record_failure, target_id
from embench.served_parity import check_target_parity, parity_label

log = logging.getLogger(__name__)

Launcher = Literal["auto", "docker", "process"]
TOKENIZER_FILE = "tokenizer.json"  # in every prepared model folder


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
    host_slot: int = 0  # which of the run's hosts (embench.host_slots)

    @classmethod
    def from_airflow(cls, context: Any) -> RunContext:
        """From an Airflow task context."""
        ti = context["ti"]
        run_type = str(getattr(context.get("dag_run"), "run_type", "manual"))
        return cls(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            trigger="scheduled" if "scheduled" in run_type.lower() else "manual",
            map_index=ti.map_index if ti.map_index is not None else -1,
            try_number=ti.try_number or 1,
            host_slot=slot_of_task(ti.task_id),
        )

    @property
    def target_id(self) -> str:
        """The benchmark group's id within the run (each slot's groups are mapped from 0)."""
        return target_id(self.host_slot, self.map_index)

    def labels(self) -> dict[str, str]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "map_index": str(self.map_index),
            "try_number": str(self.try_number),
            "trigger": self.trigger,
            SLOT_LABEL: str(self.host_slot),
        }

    def container_labels(self) -> dict[str, str]:
        """Docker labels: deployment, dag and run (for the sweeps), map index (for the task)."""
        from embench.launch.docker_server import DEPLOYMENT_LABEL, deployment_name

        labels = {f"io.embench.{key}": value for key, value in self.labels().items()}
        return {**labels, DEPLOYMENT_LABEL: deployment_name()}

    def run_labels(self) -> dict[str, str]:
        """The labels every task of the run shares (a sweep removes what carries them)."""
        return {"io.embench.dag_id": self.dag_id, "io.embench.run_id": self.run_id}

    def run_dir(self) -> Path:
        """The run's folder under the data dir: its groups' work dirs, failures, report."""
        safe_run = re.sub(r"[^A-Za-z0-9._-]+", "_", self.run_id)
        return data_dir() / "runs" / self.dag_id / safe_run

    def work_dir(self) -> Path:
        """Scenario file, result and logs of this benchmark group."""
        return self.run_dir() / f"map-{self.target_id}"


def _untitled(schema: dict[str, Any]) -> None:
    """The trigger form titles each param by its name (no "Models" from pydantic)."""
    for field in schema.get("properties", {}).values():
        field.pop("title", None)


def _choice_of(values: Any) -> dict[str, Any]:
    """The form's choices for a list param whose values parse_params checks (by name)."""
    return {"items": {"type": "string", "enum": list(values)}, "uniqueItems": True}


class RunParams(BaseModel):
    """The DAG's params as a trigger form sends them, checked against the config. The DAG's
    trigger form is made from this model (embench.config.params.params_of): each field's
    type, bounds, choices and description are the form's; the choices that depend on the
    config (model ids, scenario names) the DAG adds."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_untitled)

    models: list[str] = Field(
        min_length=1,
        description="Model ids from config/models.yaml.",
        json_schema_extra={"uniqueItems": True},
    )
    runtimes: list[str] = Field(  # empty: each model's own runtimes
        default_factory=list,
        description=(
            "Empty: each model's own runtimes (models.yaml) and external servers (benchmark.yaml)."
        ),
        json_schema_extra=_choice_of(ALL_RUNTIMES),
    )
    variants: list[str] = Field(  # empty: each runtime's own list
        default_factory=list,
        description="Empty: each runtime's own variants from models.yaml.",
        json_schema_extra=_choice_of(ALL_VARIANTS),
    )
    scenarios: list[str] = Field(  # empty: all (the form asks for one at least)
        default_factory=list,
        description="Scenarios from config/benchmark.yaml.",
        json_schema_extra={"minItems": 1, "uniqueItems": True},
    )
    repetitions: int = Field(default=1, ge=1, le=20)
    provisioner: Literal["local", "ssh", "ec2"] = Field(
        default="local",
        description="local: this machine; ssh: a host of host.ssh.hosts; ec2: an instance.",
    )
    launcher: Launcher = Field(
        default="auto",
        description="auto: docker (on this machine: process when no Docker daemon answers).",
    )
    fail_on_regression: bool = False
    autotune: bool | None = Field(  # None: benchmark.yaml's autotune.enabled
        default=None,
        description="Tune the server's settings per host first (benchmark.yaml's autotune; "
        "cached per host fingerprint).",
    )


def default_params(config: AppConfig) -> dict[str, Any]:
    bench = config.benchmark
    return {
        "models": list(bench.models),
        "runtimes": list(bench.runtimes or []),
        "variants": list(bench.variants or []),
        "scenarios": [s.name for s in bench.scenarios],
        "repetitions": bench.repetitions,
        "provisioner": bench.host.provisioner,
        "launcher": "auto",
        "fail_on_regression": bench.regression.on_regression == "fail",
        "autotune": bench.autotune.enabled,
    }


def parse_params(params: dict[str, Any], config: AppConfig) -> RunParams:
    try:
        parsed = RunParams.model_validate({k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        raise params_error("DAG params", exc) from None
    for model_id in parsed.models:
        config.model(model_id)  # names the known ids when unknown
    for runtime in parsed.runtimes:
        if runtime not in ALL_RUNTIMES:
            raise ConfigError(
                f"DAG params: unknown runtime {runtime!r}; expected one of: "
                f"{', '.join(ALL_RUNTIMES)}"
            )
    for variant in parsed.variants:
        if variant not in ALL_VARIANTS:
            raise ConfigError(
                f"DAG params: unknown variant {variant!r}; expected one of: "
                f"{', '.join(ALL_VARIANTS)}"
            )
    known = {s.name for s in config.benchmark.scenarios}
    for name in parsed.scenarios:
        if name not in known:
            raise ConfigError(f"DAG params: unknown scenario {name!r}")
    return parsed


def plan_targets(params: dict[str, Any], config: AppConfig) -> list[dict[str, Any]]:
    """One target per (model, runtime, variant, repetition) and instance type of the axis,
    each given to a host slot: the maps of the slots' benchmark task groups. The runtimes and
    variants params filter each model's own lists."""
    run = parse_params(params, config)
    targets = []
    for model_id in run.models:
        for runtime, variant in _model_targets(config, model_id):
            if run.runtimes and runtime not in run.runtimes:
                continue
            # an external server's variant is its name: the variants filter is for builds
            if run.variants and variant not in run.variants and runtime != EXTERNAL_RUNTIME:
                continue
            for repetition in range(1, run.repetitions + 1):
                targets.append(
                    {
                        "model": model_id,
                        "runtime": runtime,
                        "variant": variant,
                        "repetition": repetition,
                        "scenarios": run.scenarios,
                    }
                )
    if not targets:
        raise ConfigError("DAG params select no (model, runtime, variant) to benchmark")
    return assign(targets, slots_in_use(config.benchmark.host, run.provisioner))


def _model_targets(config: AppConfig, model_id: str) -> list[tuple[str, str]]:
    """models.yaml's (runtime, variant) pairs of the model, then its external servers."""
    external = [(EXTERNAL_RUNTIME, e.name) for e in config.external_for(model_id)]
    return config.model(model_id).targets() + external


def resolve_launcher(requested: str, host: Host) -> str:
    """`auto`: docker when the host's daemon answers, else (this machine only) process. A
    remote host runs the docker launcher or nothing: a benchmark never silently moves onto
    the worker."""
    if host.remote:
        if requested == "process":
            raise ConfigError(
                f"DAG params: launcher: the process launcher runs on this worker only; host "
                f"{host.name} ({host.provisioner}) needs launcher docker or auto"
            )
        return "docker"
    if requested != "auto":
        return requested
    from docker import APIClient
    from docker.errors import DockerException

    try:
        APIClient(base_url=host.docker_url, timeout=5).ping()
        return "docker"
    except (DockerException, OSError):
        log.info("no Docker daemon at %s: using the process launcher", host.docker_url)
        return "process"


# ------------------------------------------------------------------------------- hosts


def provision_host(
    params: dict[str, Any],
    slot: int,
    ctx: RunContext,
    config: AppConfig,
    run_is_live: RunIsLive,
) -> dict[str, Any] | None:
    """Acquire the slot's host and choose the launcher; with Docker, check that its daemon
    answers, work out how this worker reaches the containers it starts there (failing at
    once when it cannot), and remove containers that runs no longer alive left on it. A
    failure after the host was acquired releases it. None: the plan gives the slot nothing
    (fewer targets than hosts, or a provisioner with fewer hosts), so no host is taken."""
    run = parse_params(params, config)
    mine = targets_of(plan_targets(params, config), slot)
    if not mine:
        return None
    instance_type = mine[0]["instance_type"]
    provisioner = make_provisioner(
        config.benchmark.host, run.provisioner, config.config_dir, run_is_live, instance_type
    )
    for gone in provisioner.sweep_dead(run_is_live):
        log.warning("released host %s: its run is no longer alive", gone)
    host = provisioner.acquire(
        {**ctx.labels(), SLOT_LABEL: str(slot), "deployment": deployment_name()}
    )
    try:
        provisioned = {
            "host": host.to_dict(),
            "launcher": resolve_launcher(run.launcher, host),
            "docker_network": None,
            SLOT_LABEL: slot,
            "instance_type": host.instance_type or instance_type,
        }
        if provisioned["launcher"] == "docker":
            from embench.launch.reach import worker_network

            with DockerSite(host, config) as site:
                site.ping()
                if not host.remote:
                    configured = os.environ.get("EMBENCH_DOCKER_NETWORK")
                    configured = configured or config.benchmark.host.docker_network
                    network = worker_network(site.cli, configured, host.docker_url)
                    provisioned["docker_network"] = network
                for stale in site.sweep_stale(run_is_live):
                    log.warning(
                        "removed %s, left by %s %s", stale["name"], stale["dag_id"], stale["run_id"]
                    )
    except BaseException:
        provisioner.release(host)
        raise
    log.info(
        "host slot %d: %s (%s, %s%s), launcher %s, network %s, %d target(s)",
        slot,
        host.name,
        host.provisioner,
        host.address,
        f", {instance_type}" if instance_type else "",
        provisioned["launcher"],
        provisioned["docker_network"] or "the host's",
        len(mine),
    )
    return provisioned


def release_host(provisioned: dict[str, Any] | None, ctx: RunContext, config: AppConfig) -> None:
    """Remove every container of the run still on the host, then release the host: always,
    even when the host cannot be reached any more (an instance is still terminated)."""
    if not provisioned:
        return  # provisioning failed before a host existed
    host = Host.from_dict(provisioned["host"])
    try:
        with open_site(provisioned, config) as site:
            removed = site.sweep_run(ctx.run_labels())
        if removed:
            log.warning("removed leftover containers: %s", ", ".join(removed))
    except Exception as exc:  # the release below must happen whatever this did
        log.warning("could not sweep the run's containers on %s: %s", host.name, exc)
    finally:
        make_provisioner(config.benchmark.host, host.provisioner, config.config_dir).release(host)


# ---------------------------------------------------------------------- model and server


def prepare_target(target: dict[str, Any], config: AppConfig) -> dict[str, Any]:
    from embench.prepare.pipeline import prepare_targets

    (prepared,) = prepare_targets(config, target["model"], [(target["runtime"], target["variant"])])
    parity = prepared.manifest.parity
    return {
        **target,
        "model_dir": str(prepared.directory),
        "manifest_sha256": prepared.manifest_sha256,
        "cache_hit": prepared.cache_hit,
        "parity_mean_cosine": parity.mean_cosine if parity else None,
    }


def ship_to_host(
    prepared: dict[str, Any], provisioned: dict[str, Any], config: AppConfig
) -> dict[str, Any]:
    """Put the images and the prepared model on the host, each only when it lacks them."""
    with open_site(provisioned, config) as site:
        return dict(site.ship(prepared))


def tune_server(
    prepared: dict[str, Any],
    provisioned: dict[str, Any],
    params: dict[str, Any],
    ctx: RunContext,
    config: AppConfig,
) -> dict[str, Any]:
    """The prepared target with the server settings to benchmark it with (`server_settings`)
    and the tuning record (`tuning`, None when not tuned): benchmark.yaml's `server:`
    settings at once when autotune is off (benchmark.yaml or the `autotune` param) or the
    target is a peer server; else the settings embench.tuning finds on this host (or has
    cached for it)."""
    from embench.tuning import TUNABLE_RUNTIMES, tune

    server = config.benchmark.server
    if prepared["runtime"] not in TUNABLE_RUNTIMES:
        return {**prepared, "server_settings": None, "tuning": None}
    settings = server.settings()
    enabled = parse_params(params, config).autotune
    if not (config.benchmark.autotune.enabled if enabled is None else enabled):
        return {**prepared, "server_settings": settings, "tuning": None}
    limits = server.limits.model_dump()
    host_cpuset = Host.from_dict(provisioned["host"]).server_cpuset
    if host_cpuset:  # the host's own cores: another tuning than benchmark.yaml's
        limits["cpuset"] = host_cpuset
    with open_site(provisioned, config) as site:
        record = tune(
            site,
            prepared,
            settings,
            limits,
            config.benchmark.autotune,
            ctx.work_dir() / "autotune",
            server_name(ctx).replace("embench-server-", "embench-tune-", 1),
            ctx.container_labels(),
        )
    return {**prepared, "server_settings": record["settings"], "tuning": record}


def server_name(ctx: RunContext) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{ctx.dag_id}-{ctx.run_id}")[-80:].strip("-.")
    return f"embench-server-{safe}-{ctx.target_id}"


def client_name(ctx: RunContext) -> str:
    """One name per (run, map index): a retry's client replaces a lost try's, still running."""
    return server_name(ctx).replace("embench-server-", "embench-client-", 1)


def start_server(
    prepared: dict[str, Any], provisioned: dict[str, Any], ctx: RunContext, config: AppConfig
) -> dict[str, Any]:
    """Setup: start the server under test on the host and wait until it answers /health."""
    with open_site(provisioned, config) as site:
        handle = _start(site, prepared, ctx, config)
    log.info(
        "server %s healthy at %s, %.1f s from start",
        handle.name,
        handle.url,
        handle.start_to_healthy_s or 0.0,
    )
    return handle.to_dict()


def stop_server(
    handle: dict[str, Any] | None,
    provisioned: dict[str, Any] | None,
    ctx: RunContext,
    config: AppConfig,
) -> None:
    """Teardown: fetch the server's log, remove the server (by id, and by name for a
    replacement a retry started). Safe when start_server failed before a server existed."""
    if not handle or not provisioned or handle["launcher"] == "external":
        return  # nothing started, or a server the user runs
    with open_site(provisioned, config) as site:
        site.stop_server(ServerHandle.from_dict(handle), ctx.work_dir() / "server.log")


def _start(
    site: Site, prepared: dict[str, Any], ctx: RunContext, config: AppConfig
) -> ServerHandle:
    """The target's server: started on the site, or (external) found answering."""
    if prepared["runtime"] == EXTERNAL_RUNTIME:
        return external_handle(config.external(prepared["variant"]))
    return site.start_server(
        prepared,
        server_name(ctx),
        ctx.container_labels(),
        ctx.work_dir() / "server.log",
        settings=prepared.get("server_settings"),  # tune_server's (None: benchmark.yaml's)
    )


# ---------------------------------------------------------------------------- benchmark


def run_benchmark(
    prepared: dict[str, Any],
    provisioned: dict[str, Any],
    server: dict[str, Any],
    ctx: RunContext,
    config: AppConfig,
    timeout_s: float = 3600.0,
) -> str:
    """Run the scenarios against the server; returns the result file's path (on the worker).
    A server that stopped during the run fails the task and its partial result is dropped,
    so that the retry, which starts a new server, measures again. The host probe runs on the
    server's cores before and after the scenarios (the server idle) and goes into the result:
    a failed probe is a note there, never the benchmark's failure."""
    with open_site(provisioned, config) as site:
        handle = _server_answering(site, prepared, ServerHandle.from_dict(server), ctx, config)
        parity = check_target_parity(prepared, handle.url, handle.name, config)
        labels = {**parity_label(parity), **host_labels(provisioned, config)}
        scenarios = write_run_scenarios(prepared, ctx, config, handle, labels)
        out = result_path(ctx)
        out.unlink(missing_ok=True)  # a failed earlier try's partial result
        calibration = HostCalibration(site, handle)
        calibration.before()
        try:
            site.run_client(
                handle, scenarios, out, client_name(ctx), ctx.container_labels(), timeout_s
            )
        finally:
            stopped = _server_failure(site, handle)
        if stopped:
            out.unlink(missing_ok=True)
            raise EmbenchError(
                f"the server {handle.name} stopped during the benchmark ({stopped}); "
                "its partial result was discarded"
            )
        calibration.after()
        if not out.is_file():
            raise EmbenchError(f"the load client finished without writing {out}")
        calibration.attach(out)
    summary = json.loads(out.read_text())
    log.info(
        "result %s: status %s, %d scenario(s)",
        out,
        summary.get("status"),
        len(summary.get("scenarios", [])),
    )
    return str(out)


def host_labels(provisioned: dict[str, Any], config: AppConfig) -> dict[str, str]:
    """What the result says of the host: its name, its instance type (part of the history
    key) and its price, where known."""
    host = Host.from_dict(provisioned["host"])
    instance_type = provisioned.get("instance_type")
    price = host_price(
        config, instance_type=instance_type, host_name=host.name, provisioner=host.provisioner
    )
    return {"host": host.name, **price_labels(price, instance_type)}


def _server_failure(site: Site, handle: ServerHandle) -> str | None:
    if handle.launcher == "external":
        return None  # not ours to watch: a failure shows as errors in the result
    try:
        return site.server_failure(handle)
    except Exception as exc:  # the host went away: not the server's fault, and no verdict
        log.warning("cannot tell whether the server still runs: %s", exc)
        return None


def _server_answering(
    site: Site, prepared: dict[str, Any], handle: ServerHandle, ctx: RunContext, config: AppConfig
) -> ServerHandle:
    """The server of the setup task, or a new one when it died (a retry after a crash)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{handle.url}/health", timeout=5) as response:
            if response.status == 200:
                return handle
    except OSError as exc:
        log.warning("server %s does not answer (%s): starting a new one", handle.name, exc)
    if handle.launcher != "external":
        site.stop_server(handle, None)
    return _start(site, prepared, ctx, config)


def write_run_scenarios(
    target: dict[str, Any],
    ctx: RunContext,
    config: AppConfig,
    server: ServerHandle,
    labels_extra: dict[str, str] | None = None,
) -> Path:
    from embench.report import COLD_START_LABEL, TUNING_LABEL

    extra = {"repetition": str(target["repetition"]), **(labels_extra or {})}
    if target.get("tuning"):
        extra[TUNING_LABEL] = json.dumps(target["tuning"], sort_keys=True)
    if server.start_to_healthy_s is not None:
        extra[COLD_START_LABEL] = str(server.start_to_healthy_s)
    labels = RunLabels(
        model=target["model"],
        variant=target["variant"],
        runtime=target["runtime"],
        git_sha=git_sha(),
        labels={**ctx.labels(), **extra},
    )
    # lengths cut with the model's own tokenizer: it goes beside the scenario file
    tokenizer = ctx.work_dir() / TOKENIZER_FILE
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(target["model_dir"]) / TOKENIZER_FILE, tokenizer)
    options = client_options(target, config)
    document = scenario_file(config, target["scenarios"] or None, labels, TOKENIZER_FILE, options)
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
    ctx: RunContext, params: dict[str, Any], config: AppConfig
) -> list[dict[str, Any]]:
    """Judge the whole DAG run once, after every benchmark group: the repetitions of a
    target are one night, pooled into one judgement per comparability key."""
    from embench.store.db import make_engine, upgrade_to_head
    from embench.store.detect import detect_dag_run, settings_from_config

    regression = config.benchmark.regression
    engine = make_engine()
    upgrade_to_head(engine)
    verdicts = detect_dag_run(
        engine, ctx.dag_id, ctx.run_id, settings_from_config(regression), regression.metrics
    )
    regressed = [v for v in verdicts if v["status"] == "regressed"]
    for verdict in regressed:
        log.warning("REGRESSED %s %s", verdict["metric"], verdict["reason"])
    explained = [v for v in verdicts if v["status"] == "explained"]
    for verdict in explained:
        log.warning("EXPLAINED by the host %s %s", verdict["metric"], verdict["reason"])
    return verdicts


def outcome(
    verdicts: list[dict[str, Any]],
    failed_tasks: list[str],
    ctx: RunContext,
    params: dict[str, Any],
    config: AppConfig,
) -> int:
    """The run's last task, and so its state: failed when a task of the run failed for good
    (the tasks before it run whatever happened, so without it a failed group or report would
    end in a "success"), or when the run regressed and its params say that fails it. Last, so
    that the verdicts are stored and the report written whatever it decides. Returns how many
    figures regressed."""
    if failed_tasks:
        raise EmbenchError(
            f"{len(failed_tasks)} task(s) of {ctx.dag_id}/{ctx.run_id} failed: "
            + ", ".join(sorted(failed_tasks))
        )
    regressed = [v for v in verdicts if v["status"] == "regressed"]
    if regressed and parse_params(params, config).fail_on_regression:
        raise RegressionFound(f"{len(regressed)} regression(s) in {ctx.dag_id}/{ctx.run_id}")
    return len(regressed)


# ------------------------------------------------------------------------------- report


def record_task_failure(ctx: RunContext, task_id: str, error: BaseException | str | None) -> None:
    """The DAG's failure callback: a task failed for good; the report says which and why."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    path = record_failure(
        ctx.run_dir(), task_id, ctx.map_index, ctx.try_number, text or "no error was given"
    )
    log.info("recorded the failure of %s in %s", task_id, path)


def report(ctx: RunContext, params: dict[str, Any], config: AppConfig) -> str:
    """Write the run's comparison report from what the store holds for this DAG run; returns
    its path. Runs even when some groups (or whole hosts) failed: what was stored is shown,
    and each planned target that was not, with the recorded reason."""
    from embench.report import collect, write_report
    from embench.run_outcome import failures, not_measured
    from embench.store.db import make_engine, session_scope, upgrade_to_head
    from embench.store.queries import dag_run_ingest_keys

    engine = make_engine()
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        keys = dag_run_ingest_keys(session, ctx.dag_id, ctx.run_id)
        data = collect(session, keys, f"Embedding benchmark {ctx.dag_id} / {ctx.run_id}")
    stored = {key.rsplit("/", 1)[-1] for key in keys}
    try:
        planned = plan_targets(params, config)
    except ConfigError:
        planned = []  # the plan task failed on these params and said why
    data.not_measured = not_measured(planned, stored, failures(ctx.run_dir()))
    for item in data.not_measured:
        log.warning("NOT MEASURED %s: %s", item["target"], item["reason"])
    path, html_path = write_report(ctx.run_dir(), data)  # report.md, report.html
    log.info(
        "report: %s and %s (%d stored run(s))\n%s",
        path,
        html_path,
        len(keys),
        path.read_text(encoding="utf-8"),
    )
    return str(path)
