"""A server and a load client on one benchmark host: the one object every DAG task that touches
the host goes through (ship, start, health, run the client, fetch, stop, sweep), whatever the
provisioner (this machine, a static SSH host, an EC2 instance) and the launcher.

- DockerSite: the host's Docker daemon, local or through an SSH tunnel. What the run needs is
  shipped first, content-addressed: the images (skipped when the host has the same image ID),
  and the prepared model into a volume named by its manifest's hash (skipped when present,
  verified against the manifest's file hashes on arrival). The server publishes its port on
  the host; the worker checks /health at the host's address; the client runs on the host, in
  a container on its own cpuset, and its result and the server's log come back to the worker.
- ProcessSite: both as local processes (this machine only, no Docker).

Open a site with `open_site(provisioned, config)` as a context manager."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from docker import APIClient
from docker.errors import APIError, NotFound

from client.result import ProbeScores
from embench.config import AppConfig
from embench.config.schema import EXTERNAL_RUNTIME, server_environment
from embench.errors import EmbenchError
from embench.hosts.base import Host
from embench.hosts.ssh import DockerTunnel, SshEndpoint
from embench.launch.client import client_arguments, client_inputs, describe_exit
from embench.launch.docker_server import (
    DEFAULT_MEMORY,
    MANAGED_LABEL,
    ROLE_LABEL,
    RunIsLive,
    container_failure,
    hardening,
    remove_container,
    remove_earlier_tries,
    start_server_container,
    sweep_containers,
    sweep_stale_containers,
)
from embench.launch.handle import ServerHandle
from embench.launch.host_probe import PROBE_COMMAND, parse_probe

log = logging.getLogger(__name__)

CLIENT_ROOT = "/embench"  # a volume of the client's container: its root is read-only
CLIENT_IN = f"{CLIENT_ROOT}/in"
CLIENT_OUT = f"{CLIENT_ROOT}/out"
CLIENT_USER = "10001:10001"  # client/Dockerfile's user, by number (an older image has none)
DOCKER_SOCKET = "/var/run/docker.sock"
MODEL_VOLUME_PREFIX = "embench-model-"
VERIFIED_MARK = ".embench-verified"  # server.manifest writes it once every file matched


class Site(Protocol):
    """What DockerSite and ProcessSite both do; the DAG's tasks use nothing else."""

    launcher: str

    def ship(self, prepared: dict[str, Any]) -> dict[str, Any]: ...

    def start_server(
        self,
        prepared: dict[str, Any],
        name: str,
        labels: dict[str, str],
        log_path: Path,
        *,
        settings: dict[str, Any] | None = None,
    ) -> ServerHandle: ...

    def host_fingerprint(self, name: str, labels: dict[str, str]) -> dict[str, Any]: ...

    def server_build(self, prepared: dict[str, Any]) -> str: ...

    def server_failure(self, handle: ServerHandle) -> str | None: ...

    def probe_host(self, handle: ServerHandle) -> ProbeScores: ...

    def server_cpuset(self, handle: ServerHandle) -> str | None: ...

    def run_client(
        self,
        handle: ServerHandle,
        scenarios: Path,
        out: Path,
        name: str,
        labels: dict[str, str],
        timeout_s: float,
    ) -> None: ...

    def stop_server(self, handle: ServerHandle, log_path: Path | None) -> None: ...

    def sweep_stale(self, run_is_live: RunIsLive) -> list[dict[str, str]]: ...

    def sweep_run(self, run_labels: dict[str, str]) -> list[str]: ...


def docker_api(docker_url: str) -> APIClient:
    """The Docker provider's client for a daemon URL (TLS and the rest as DockerHook builds it)."""
    from airflow.providers.docker.hooks.docker import DockerHook

    return DockerHook(docker_conn_id=None, base_url=docker_url, timeout=120).api_client


class DockerSite:
    launcher = "docker"

    def __init__(self, host: Host, config: AppConfig, network: str | None = None) -> None:
        self.host = host
        self.config = config
        self.network = network
        self._tunnel = DockerTunnel(SshEndpoint(**host.ssh)) if host.ssh else None
        self._cli: APIClient | None = None
        self._socket_gid: str | None = None

    # -- connection --------------------------------------------------------------------------

    def __enter__(self) -> DockerSite:
        url = self._tunnel.open().docker_url if self._tunnel else str(self.host.docker_url)
        self._cli = docker_api(url)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: object, trace: object) -> None:
        failed = isinstance(error, Exception) and not isinstance(error, EmbenchError)
        # A Docker call can fail on the broken connection a moment before ssh itself exits.
        lost = self._tunnel is not None and failed and self._tunnel.gone_within(3.0)
        if self._cli is not None:
            self._cli.close()
            self._cli = None
        if self._tunnel is not None:
            target = self._tunnel.endpoint.target
            self._tunnel.close()
            # Whatever Docker call noticed it, say what happened: the host went away.
            if lost:
                raise EmbenchError(
                    f"lost the SSH connection to host {self.host.name} ({target}): {error}"
                ) from error

    @property
    def cli(self) -> APIClient:
        assert self._cli is not None, "open the site first (with open_site(...))"
        return self._cli

    @property
    def remote(self) -> bool:
        return self.host.ssh is not None

    def ping(self) -> None:
        try:
            self.cli.ping()
        except Exception as exc:
            raise EmbenchError(f"no Docker daemon answers on host {self.host.name}: {exc}") from exc

    # -- shipping ----------------------------------------------------------------------------

    def ship(self, prepared: dict[str, Any]) -> dict[str, Any]:
        """Put the server and client images and the prepared model on the host, each only
        when the host does not hold the same content already. Returns what was done."""
        started = time.monotonic()
        images = self.config.benchmark.images
        report: dict[str, Any] = {"images": {}}
        # an external server runs elsewhere: only the client comes here
        external = prepared["runtime"] == EXTERNAL_RUNTIME
        servers = [] if external else [server_image(self.config, prepared)]
        for image in [*servers, images.client]:
            report["images"][image] = self._ship_image(image) if self.remote else "local"
        if external:
            report["model"] = "none (an external server)"
        else:
            report["model"] = self._ship_model(prepared) if self.remote else "local"
        report["seconds"] = round(time.monotonic() - started, 2)
        log.info("shipped to %s in %.1f s: %s", self.host.name, report["seconds"], report)
        return report

    def _ship_image(self, image: str) -> str:
        from embench.hosts.local import LocalProvisioner  # the worker's own daemon

        local = docker_api(LocalProvisioner(self.config.benchmark.host.docker_url).docker_url)
        try:
            local_image = local.inspect_image(image)
        except NotFound:
            raise EmbenchError(
                f"the image {image!r} is not on this worker's Docker daemon, so it cannot be "
                "shipped; build it with scripts/docker/build_images.sh"
            ) from None
        local_id = local_image["Id"]
        self._require_architecture(image, str(local_image.get("Architecture") or "?"))
        try:
            if self.cli.inspect_image(image)["Id"] == local_id:
                return "present"
        except NotFound:
            pass
        started = time.monotonic()
        # docker save streamed into docker load: never held whole, never written to disk here.
        self.cli.load_image(local.get_image(image), quiet=True)
        if self.cli.inspect_image(image)["Id"] != local_id:
            raise EmbenchError(f"the image {image!r} arrived on {self.host.name} with another ID")
        log.info(
            "shipped image %s to %s in %.1f s", image, self.host.name, time.monotonic() - started
        )
        return f"shipped in {time.monotonic() - started:.1f} s"

    def _require_architecture(self, image: str, built_for: str) -> None:
        """An image runs on the host's CPU architecture or not at all (an amd64 build on a
        Graviton instance fails with "exec format error" at the server's start): say so
        before shipping it."""
        host_arch = str(self.cli.version().get("Arch") or "?")
        if built_for != host_arch:
            instance = self.host.instance_type or "its instance type"
            raise EmbenchError(
                f"the image {image!r} is built for {built_for}, but host {self.host.name} "
                f"({instance}) runs {host_arch}: no {host_arch} build of it is on this "
                f"worker. Build the images for {host_arch} (scripts/docker/build_images.sh "
                f"on a {host_arch} machine, or `docker buildx build --platform "
                f"linux/{host_arch}`) and load them here under the same tags"
            )

    def _ship_model(self, prepared: dict[str, Any]) -> str:
        volume = model_volume(prepared)
        image = server_image(self.config, prepared)
        if self._volume_verified(volume, image, prepared["manifest_sha256"]):
            return "present"
        with contextlib.suppress(NotFound):
            self.cli.remove_volume(volume, force=True)  # an unverified leftover
        self.cli.create_volume(
            volume,
            labels={
                MANAGED_LABEL: "true",
                "io.embench.manifest_sha256": prepared["manifest_sha256"],
            },
        )
        started = time.monotonic()
        container = self.cli.create_container(
            image,
            entrypoint=["python3", "-m", "server.manifest"],
            command=["verify", "/model", "--mark"],
            user="0:0",
            labels={MANAGED_LABEL: "true"},
            host_config=self.cli.create_host_config(
                binds={volume: {"bind": "/model", "mode": "rw"}}
            ),
        )["Id"]
        try:
            self.cli.put_archive(container, "/model", _tar_stream(Path(prepared["model_dir"])))
            self.cli.start(container)
            status = self.cli.wait(container, timeout=300)["StatusCode"]
            output = self.cli.logs(container).decode(errors="replace").strip()
        finally:
            remove_container(self.cli, container)
        if status != 0 or "every file matches the manifest" not in output:
            self.cli.remove_volume(volume, force=True)
            raise EmbenchError(
                f"the model shipped to {self.host.name} failed its check against the manifest "
                f"(status {status}): {output or 'no output: is the server image up to date?'}"
            )
        return f"shipped in {time.monotonic() - started:.1f} s"

    def _volume_verified(self, volume: str, image: str, manifest_sha256: str) -> bool:
        try:
            self.cli.inspect_volume(volume)
        except NotFound:
            return False
        probe = self.cli.create_container(
            image,
            entrypoint=["cat"],
            command=[f"/model/{VERIFIED_MARK}"],
            user="0:0",
            labels={MANAGED_LABEL: "true"},
            host_config=self.cli.create_host_config(
                binds={volume: {"bind": "/model", "mode": "ro"}}
            ),
        )["Id"]
        try:
            self.cli.start(probe)
            self.cli.wait(probe, timeout=60)
            mark = self.cli.logs(probe, stderr=False).decode(errors="replace").strip()
        finally:
            remove_container(self.cli, probe)
        return mark == manifest_sha256

    # -- server ------------------------------------------------------------------------------

    def start_server(
        self,
        prepared: dict[str, Any],
        name: str,
        labels: dict[str, str],
        log_path: Path,
        *,
        settings: dict[str, Any] | None = None,
    ) -> ServerHandle:
        """The server container; its log comes back to `log_path` when it stops. `settings`
        (the server's, by name) replace benchmark.yaml's `server:` settings (not its limits)."""
        server = self.config.benchmark.server
        environment = server.environment() if settings is None else server_environment(settings)
        if self.remote:
            model_source, model_type = model_volume(prepared), "volume"
        else:
            model_source, model_type = prepared["model_dir"], "bind"
        handle = start_server_container(
            self.cli,
            image=server_image(self.config, prepared),
            name=name,
            model_source=model_source,
            model_mount_type=model_type,
            environment=environment,
            labels=labels,
            cpuset=self.host.server_cpuset or server.limits.cpuset,
            cpus=server.limits.cpus,
            mem_limit=server.limits.memory,
            pids_limit=server.limits.pids,
            network=self.network,
            publish_address=self.host.publish_address,
            publish_port=self.host.publish_port,
            reach_address=self.host.address,
            docker_url=self.host.docker_url,
        )
        return handle

    def server_failure(self, handle: ServerHandle) -> str | None:
        return container_failure(self.cli, str(handle.container_id))

    @property
    def client_cpuset(self) -> str | None:
        """The load client's CPUs on this host: the host's own, else benchmark.yaml's."""
        return self.host.client_cpuset or self.config.benchmark.client.cpuset

    def host_fingerprint(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """The host's environment fingerprint (client.env.fingerprint: hardware_key and the
        rest), as the load client's container sees it there: what its results will carry."""
        remove_container(self.cli, name)
        container = self.cli.create_container(
            self.config.benchmark.images.client,
            command=["fingerprint"],
            name=name,
            user=CLIENT_USER,
            labels={**labels, MANAGED_LABEL: "true"},
            host_config=self.cli.create_host_config(
                network_mode="none", cpuset_cpus=self.client_cpuset, **self._client_limits()
            ),
        )["Id"]
        try:
            self.cli.start(container)
            status = self.cli.wait(container, timeout=120)["StatusCode"]
            out = self.cli.logs(container, stdout=True, stderr=False).decode(errors="replace")
            if status != 0:
                raise EmbenchError(f"the client's fingerprint exited with status {status}: {out}")
        finally:
            remove_container(self.cli, container)
        return dict(json.loads(out))

    def server_build(self, prepared: dict[str, Any]) -> str:
        """The server image's ID on the host (a rebuilt image is another build)."""
        image = server_image(self.config, prepared)
        return f"{image}@{self.cli.inspect_image(image)['Id']}"

    def probe_host(self, handle: ServerHandle) -> ProbeScores:
        """The host probe inside the server's container: exactly the server's cpuset, CPU
        quota and memory limit. Run it while the server is idle. (The Docker connection's
        read timeout bounds the wait.)"""
        container = str(handle.container_id or handle.name)
        exec_id = self.cli.exec_create(container, PROBE_COMMAND)["Id"]
        stdout, stderr = self.cli.exec_start(exec_id, demux=True)
        code = self.cli.exec_inspect(exec_id)["ExitCode"]
        return parse_probe(
            code, (stdout or b"").decode(errors="replace"), (stderr or b"").decode(errors="replace")
        )

    def server_cpuset(self, handle: ServerHandle) -> str | None:
        """The cpuset the server's container has (None: every CPU of the host)."""
        inspected = self.cli.inspect_container(str(handle.container_id or handle.name))
        return inspected["HostConfig"].get("CpusetCpus") or None

    def stop_server(self, handle: ServerHandle, log_path: Path | None) -> None:
        """Fetch the server's log to the worker, then remove the container (by id, and by name
        for a replacement a retry started). Safe when it is gone already."""
        if log_path is not None:
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_path.write_bytes(self.cli.logs(handle.container_id or handle.name))
            except (NotFound, APIError):
                pass
        for container in {handle.container_id, handle.name} - {None}:
            remove_container(self.cli, str(container))

    # -- client ------------------------------------------------------------------------------

    def run_client(
        self,
        handle: ServerHandle,
        scenarios: Path,
        out: Path,
        name: str,
        labels: dict[str, str],
        timeout_s: float,
    ) -> None:
        """Run the load client to completion in a container on the host, streaming its log
        into this task's log; its result JSON comes back to `out`."""
        args = client_arguments(
            handle,
            f"{CLIENT_IN}/{scenarios.name}",
            f"{CLIENT_OUT}/{out.name}",
        )
        socket_path = self.host.docker_socket
        remove_container(self.cli, name)  # an earlier try's, under the same name
        # ...and any other client of this target an earlier try (killed hard) left running
        for leftover in remove_earlier_tries(self.cli, "client", labels):
            log.warning("removed the client container %s of an earlier try", leftover)
        container = self.cli.create_container(
            self.config.benchmark.images.client,
            command=args,
            name=name,
            # Not root: the Docker socket (to sample the server's container) through its
            # group only.
            user=CLIENT_USER,
            labels={**labels, MANAGED_LABEL: "true", ROLE_LABEL: "client"},
            volumes=[CLIENT_ROOT],  # anonymous, removed with the container
            host_config=self.cli.create_host_config(
                # The host's network (unless the worker's network is given): the server's
                # port is published on the host's loopback only (127.0.0.1 locally), which a
                # container on a bridge cannot reach; and the client measures the host's
                # network path, not a bridge's NAT. Its capabilities are dropped all the same.
                network_mode=self.network or "host",
                binds={socket_path: {"bind": DOCKER_SOCKET, "mode": "ro"}},
                group_add=[self._docker_socket_group(socket_path)],
                cpuset_cpus=self.client_cpuset,
                **self._client_limits(),
            ),
        )["Id"]
        try:
            self.cli.put_archive(
                container,
                CLIENT_ROOT,  # into the volume: the read-only root takes no archive
                _tar_files(
                    {
                        **{
                            f"{CLIENT_IN[len(CLIENT_ROOT) + 1 :]}/{name}": data
                            for name, data in client_inputs(scenarios).items()
                        },
                        f"{CLIENT_OUT[len(CLIENT_ROOT) + 1 :]}/": None,
                    }
                ),
            )
            self.cli.start(container)
            log.info(
                "the load client runs in container %s (%s) on %s",
                name,
                self.config.benchmark.images.client,
                self.host.name,
            )
            streamer = threading.Thread(target=self._stream_log, args=(container,), daemon=True)
            streamer.start()
            try:
                status = self.cli.wait(container, timeout=timeout_s)["StatusCode"]
            except Exception as exc:
                if "Read timed out" in str(exc):
                    raise EmbenchError(f"the load client ran past {timeout_s:.0f} s") from None
                raise
            streamer.join(timeout=10)
            if status != 0:
                raise EmbenchError(describe_exit(status))
            _fetch_file(self.cli, container, f"{CLIENT_OUT}/{out.name}", out)
        finally:
            remove_container(self.cli, container)

    def _client_limits(self) -> dict[str, Any]:
        """The client container's memory and pids limits and least privilege."""
        limits = self.config.benchmark.client
        memory = limits.memory or DEFAULT_MEMORY
        return {"mem_limit": memory, "memswap_limit": memory, **hardening(limits.pids)}

    def _docker_socket_group(self, socket_path: str) -> str:
        """The group id that owns the host's Docker socket (the client's only way to it as a
        non-root user), as a container on the host sees it; asked once per site."""
        if self._socket_gid is None:
            container = self.cli.create_container(
                self.config.benchmark.images.client,
                entrypoint=["python3", "-c", "import os, sys; print(os.stat(sys.argv[1]).st_gid)"],
                command=[DOCKER_SOCKET],
                user=CLIENT_USER,
                labels={MANAGED_LABEL: "true"},
                host_config=self.cli.create_host_config(
                    network_mode="none",
                    binds={socket_path: {"bind": DOCKER_SOCKET, "mode": "ro"}},
                    **self._client_limits(),
                ),
            )["Id"]
            try:
                self.cli.start(container)
                status = self.cli.wait(container, timeout=60)["StatusCode"]
                out = self.cli.logs(container).decode(errors="replace").strip()
            finally:
                remove_container(self.cli, container)
            if status != 0 or not out.isdigit():
                raise EmbenchError(
                    f"cannot tell the group of the Docker socket {socket_path} on "
                    f"{self.host.name} (status {status}): {out}"
                )
            self._socket_gid = out
        return self._socket_gid

    def _stream_log(self, container: str) -> None:
        try:
            for line in self.cli.logs(container, stream=True, follow=True):
                log.info("client: %s", line.decode(errors="replace").rstrip())
        except (NotFound, APIError, OSError):
            return

    # -- sweeps ------------------------------------------------------------------------------

    def sweep_stale(self, run_is_live: RunIsLive) -> list[dict[str, str]]:
        return sweep_stale_containers(self.cli, run_is_live)

    def sweep_run(self, run_labels: dict[str, str]) -> list[str]:
        return sweep_containers(self.cli, run_labels)


def server_image(config: AppConfig, prepared: dict[str, Any]) -> str:
    """The target's own image where it names one (an A/B candidate's), else its runtime's."""
    return prepared.get("image") or config.benchmark.images.server(prepared["runtime"])


def model_volume(prepared: dict[str, Any]) -> str:
    return f"{MODEL_VOLUME_PREFIX}{prepared['manifest_sha256'][:32]}"


def _tar_stream(directory: Path) -> Iterator[bytes]:
    """The directory's files as a tar stream, produced while it is sent."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
            for path in sorted(directory.iterdir()):
                tar.add(path, arcname=path.name)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as source:
        while chunk := source.read(1 << 20):
            yield chunk
    writer.join()


def _tar_files(files: dict[str, bytes | None]) -> bytes:
    """A small tar: name -> content (None: a world-writable directory)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _fetch_file(cli: APIClient, container: str, path: str, out: Path) -> None:
    try:
        stream, _ = cli.get_archive(container, path)
    except NotFound:
        raise EmbenchError(f"the load client finished without writing {path}") from None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        extracted = tar.extractfile(member)
        if extracted is None:
            raise EmbenchError(f"{path} in the client container is not a file")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(extracted.read())


@contextmanager
def open_site(provisioned: dict[str, Any], config: AppConfig) -> Iterator[Site]:
    """The site of a provisioned host: DockerSite or ProcessSite, connected."""
    host = Host.from_dict(provisioned["host"])
    if provisioned["launcher"] == "process":
        from embench.launch.process_site import ProcessSite

        yield ProcessSite(config)
        return
    with DockerSite(host, config, provisioned.get("docker_network")) as site:
        yield site
