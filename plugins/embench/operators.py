"""The two Docker operators of the DAG, thin subclasses of the Docker provider's DockerOperator
(same arguments users know: image, environment, mounts, docker_url, TLS).

- ServerContainerOperator (a setup): starts the server detached, waits for /health, returns a
  ServerHandle. DockerOperator itself blocks until its container exits, which a server never
  does on its own.
- BenchmarkClientOperator: runs the load client to completion as DockerOperator does. Before
  that it makes sure the server answers; a retry after the server died starts a new one.

With the process launcher (no Docker on the host) both run their program as a local process
instead, so one DAG serves both launchers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.docker.operators.docker import DockerOperator
from docker.types import Mount

from embench.config import AppConfig, load_config
from embench.errors import EmbenchError
from embench.launch.client import client_arguments, describe_exit, run_client_process
from embench.launch.docker_server import MANAGED_LABEL
from embench.launch.handle import ServerHandle
from embench.steps import (
    RunContext,
    result_path,
    server_name,
    start_process_server,
    write_run_scenarios,
)


def run_context(context: Any) -> RunContext:
    """RunContext from an Airflow task context."""
    ti = context["ti"]
    run_type = str(getattr(context.get("dag_run"), "run_type", "manual"))
    return RunContext(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        trigger="scheduled" if "scheduled" in run_type.lower() else "manual",
        map_index=ti.map_index if ti.map_index is not None else -1,
        try_number=ti.try_number or 1,
    )


class _EmbenchDockerOperator(DockerOperator):
    """DockerOperator whose image and Docker host come from the run (the host is only known
    once provisioned) and the config."""

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "prepared", "provisioned")

    def __init__(
        self,
        *,
        prepared: Any,
        provisioned: Any,
        config_dir: str | None = None,
        image: str = "set-at-run-time",
        **kwargs: Any,
    ) -> None:
        super().__init__(image=image, **kwargs)
        self.prepared = prepared
        self.provisioned = provisioned
        self.config_dir = config_dir

    def _config(self) -> AppConfig:
        return load_config(Path(self.config_dir) if self.config_dir else None)

    def _use_host(self) -> dict[str, Any]:
        host = self.provisioned["host"]
        self.docker_url = host["docker_url"]
        self.__dict__.pop("hook", None)  # DockerOperator caches the hook of the old URL
        return host

    def _start_server(self, context: Any, config: AppConfig) -> dict[str, Any]:
        ctx = run_context(context)
        if self.provisioned["launcher"] == "process":
            return start_process_server(self.prepared, ctx, config)
        from embench.launch.docker_server import start_server_container

        host = self._use_host()
        server = config.benchmark.server
        image = (
            config.benchmark.images.server_torch
            if self.prepared["runtime"] == "torch"
            else config.benchmark.images.server_onnx
        )
        handle = start_server_container(
            self.cli,
            image=image,
            name=server_name(ctx),
            model_dir=self.prepared["model_dir"],
            environment=server.environment(),
            labels=ctx.container_labels(),
            cpuset=server.limits.cpuset,
            cpus=server.limits.cpus,
            mem_limit=server.limits.memory,
            network=self.provisioned.get("docker_network"),
            docker_url=host["docker_url"],
        )
        return handle.to_dict()


class ServerContainerOperator(_EmbenchDockerOperator):
    """Setup: start the server under test and return its ServerHandle (as a dict)."""

    def execute(self, context: Any) -> dict[str, Any]:
        config = self._config()
        handle = self._start_server(context, config)
        self.log.info(
            "server %s healthy at %s, %.1f s from container start",
            handle["name"],
            handle["url"],
            handle["start_to_healthy_s"],
        )
        return handle


class BenchmarkClientOperator(_EmbenchDockerOperator):
    """Run the scenarios against the server; returns the result file's path."""

    template_fields: Sequence[str] = (*_EmbenchDockerOperator.template_fields, "server")

    def __init__(self, *, server: Any, client_timeout_s: float = 3600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server = server
        self.client_timeout_s = client_timeout_s

    def execute(self, context: Any) -> str:
        config = self._config()
        ctx = run_context(context)
        handle = self._server_answering(context, config)
        scenarios = write_run_scenarios(self.prepared, ctx, config, handle)
        out = result_path(ctx)
        out.unlink(missing_ok=True)  # a failed earlier try's partial result
        args = client_arguments(handle, str(scenarios), str(out))
        try:
            if handle.launcher == "process":
                run_client_process(args, ctx.work_dir() / "client.log", self.client_timeout_s)
            else:
                self._run_client_container(context, args, ctx, config, handle.network)
        finally:
            stopped = self._server_stopped(handle)
        if stopped:
            # An infrastructure failure, not a measurement: fail so that a retry measures
            # again, and keep the figures out of the store.
            out.unlink(missing_ok=True)
            raise EmbenchError(
                f"the server {handle.name} stopped during the benchmark ({stopped}); "
                "its partial result was discarded"
            )
        if not out.is_file():
            raise EmbenchError(f"the load client finished without writing {out}")
        summary = json.loads(out.read_text())
        self.log.info(
            "result %s: status %s, %d scenario(s)",
            out,
            summary.get("status"),
            len(summary.get("scenarios", [])),
        )
        return str(out)

    def _server_answering(self, context: Any, config: AppConfig) -> ServerHandle:
        """The server of the setup task, or a new one when it died (a retry after a crash)."""
        import urllib.request

        handle = ServerHandle.from_dict(self.server)
        try:
            with urllib.request.urlopen(f"{handle.url}/health", timeout=5) as response:
                if response.status == 200:
                    return handle
        except OSError as exc:
            self.log.warning("server %s does not answer (%s): starting a new one", handle.name, exc)
        if handle.launcher == "docker":
            self._use_host()
            from embench.launch.docker_server import remove_container

            remove_container(self.cli, handle.container_id or handle.name)
        return ServerHandle.from_dict(self._start_server(context, config))

    def _server_stopped(self, handle: ServerHandle) -> str | None:
        """Why the server is no longer running, or None while it runs."""
        if handle.launcher == "docker":
            from embench.launch.docker_server import container_failure

            self._use_host()
            return container_failure(self.cli, str(handle.container_id))
        from embench.launch.process_server import process_failure

        return process_failure(int(handle.pid or 0))

    def _run_client_container(
        self,
        context: Any,
        args: list[str],
        ctx: RunContext,
        config: AppConfig,
        network: str | None,
    ) -> None:
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        self._use_host()
        work = str(ctx.work_dir())
        self.image = config.benchmark.images.client
        self.command = args
        # The server's network, or the host's when its port is published on the loopback.
        self.network_mode = network or "host"
        self.mounts = [
            Mount(work, work, type="bind"),
            Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind", read_only=True),
        ]
        # Unique per run, map index and try: runs of other DAG runs may share the daemon.
        self.container_name = server_name(ctx).replace("embench-server-", "embench-client-", 1)
        self.container_name += f"-{ctx.try_number}"
        self.labels = {**ctx.container_labels(), MANAGED_LABEL: "true"}
        self.auto_remove = "force"
        self.mount_tmp_dir = False
        try:
            super().execute(context)  # DockerOperator: run to completion, stream the log
        except DockerContainerFailedException as exc:
            status = str(exc)
            for code in (2, 3, 4, 5, 130):
                if f"'StatusCode': {code}" in status:
                    raise EmbenchError(describe_exit(code)) from None
            raise EmbenchError(f"the load client container failed: {status}") from None
