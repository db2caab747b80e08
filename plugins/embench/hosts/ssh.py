"""Benchmark hosts reached over SSH, through the OpenSSH client.

- SshEndpoint: user, address, port, key, pinned host keys; builds `ssh` command lines.
- DockerTunnel: the host's Docker socket forwarded to a local unix socket over one SSH
  connection (`ssh -L`), so that docker-py, image shipping included, talks to the remote daemon
  at OpenSSH's speed (docker-py's paramiko transport is ~100x slower on large images) and with
  the same key and host-key checks as every other SSH use.
- SshProvisioner: a static list of hosts from benchmark.yaml (bare metal, an existing
  instance); a run takes one under a lock on the host itself, so two runs never share one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from embench.errors import EmbenchError
from embench.hosts.base import Host

if TYPE_CHECKING:
    from embench.config.schema import SshHostConfig, SshHostsConfig
    from embench.launch.docker_server import RunIsLive

log = logging.getLogger(__name__)

HostKeyPolicy = Literal["pinned", "accept-new"]


@dataclass(frozen=True)
class SshEndpoint:
    """How the worker reaches a host over SSH. The key is a file on the worker (from a path
    in benchmark.yaml, or written from an Airflow connection); it never appears in a log."""

    address: str
    user: str = "root"
    port: int = 22
    key_path: str | None = None
    known_hosts: str | None = None  # the host's pinned keys (policy `pinned`)
    host_key_policy: HostKeyPolicy = "pinned"
    docker_socket: str = "/var/run/docker.sock"  # on the host
    connect_timeout_s: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    def options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            # A dropped connection is noticed within ~15 s rather than at TCP's leisure.
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
        ]  # fmt: skip
        if self.key_path:
            opts += ["-i", str(Path(self.key_path).expanduser()), "-o", "IdentitiesOnly=yes"]
        strict = "yes" if self.host_key_policy == "pinned" else "accept-new"
        opts += ["-o", f"StrictHostKeyChecking={strict}"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).expanduser()}"]
        return opts

    def argv(self, remote_command: str | None = None, *extra: str) -> list[str]:
        command = ["ssh", *self.options(), *extra, f"{self.user}@{self.address}"]
        return [*command, remote_command] if remote_command else command

    def run(
        self, remote_command: str, timeout_s: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host; a failure to connect names the host and the reason."""
        try:
            done = subprocess.run(
                self.argv(remote_command),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EmbenchError(
                f"ssh {self.target}: no answer within {timeout_s:.0f} s ({remote_command!r})"
            ) from None
        if check and done.returncode != 0:
            raise EmbenchError(f"ssh {self.target}: {_ssh_failure(done)} ({remote_command!r})")
        return done

    def preflight(self) -> None:
        """Fail before connecting when the settings cannot work."""
        if shutil.which("ssh") is None:
            raise EmbenchError("the OpenSSH client (`ssh`) is not installed on this worker")
        if self.key_path and not Path(self.key_path).expanduser().is_file():
            raise EmbenchError(f"{self.key_path}: SSH private key for {self.target} not found")
        if self.host_key_policy == "pinned":
            known = Path(self.known_hosts).expanduser() if self.known_hosts else None
            if known is None or not known.is_file():
                raise EmbenchError(
                    f"{self.target}: host keys are pinned but the known_hosts file "
                    f"{self.known_hosts!r} does not exist; record the host's key in it "
                    "(ssh-keyscan, checked against the host's own fingerprint), or set "
                    "host_key_policy: accept-new"
                )


def _ssh_failure(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or done.stdout or "").strip().splitlines()
    last = text[-1] if text else f"exit status {done.returncode}"
    if done.returncode == 255:
        return f"cannot connect: {last}"
    return f"exit status {done.returncode}: {last}"


class DockerTunnel:
    """The host's Docker socket on a local unix socket for as long as the tunnel is open."""

    def __init__(self, endpoint: SshEndpoint, ready_timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self.ready_timeout_s = ready_timeout_s
        self._dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        assert self._dir is not None, "the tunnel is not open"
        return os.path.join(self._dir, "docker.sock")

    @property
    def docker_url(self) -> str:
        return f"unix://{self.socket_path}"

    def open(self) -> DockerTunnel:
        self.endpoint.preflight()
        self._dir = tempfile.mkdtemp(prefix="embench-ssh-")  # short: unix paths max 108 bytes
        forward = f"{self.socket_path}:{self.endpoint.docker_socket}"
        argv = self.endpoint.argv(
            None, "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
            "-L", forward,
        )  # fmt: skip
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                self.close()
                last = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh exited"
                raise EmbenchError(f"ssh {self.endpoint.target}: cannot connect: {last}")
            if os.path.exists(self.socket_path) and self._answers():
                return self
            time.sleep(0.1)
        self.close()
        raise EmbenchError(
            f"ssh {self.endpoint.target}: the Docker socket {self.endpoint.docker_socket} did "
            f"not answer through the tunnel within {self.ready_timeout_s:.0f} s"
        )

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.socket_path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.")
        except OSError:
            return False

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def gone_within(self, seconds: float) -> bool:
        """Whether the connection ends within `seconds` (at once when it has already)."""
        deadline = time.monotonic() + seconds
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=5)
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> DockerTunnel:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- provisioner


class SshProvisioner:
    """A static list of hosts; acquire takes the first free one under a lock on the host (a
    directory made atomically with `mkdir`, holding the run's labels). A lock whose run is no
    longer alive (`run_is_live`, asked of Airflow) is broken; a live run's never is."""

    kind = "ssh"

    def __init__(self, config: SshHostsConfig, run_is_live: RunIsLive | None = None) -> None:
        if not config.hosts:
            raise EmbenchError(
                "host.ssh.hosts in benchmark.yaml lists no host: the ssh provisioner needs at "
                "least one (name, address, user)"
            )
        self.config = config
        self.run_is_live = run_is_live
        self._key_path: str | None = None

    def endpoint(self, entry: SshHostConfig) -> SshEndpoint:
        return SshEndpoint(
            address=entry.address,
            user=entry.user,
            port=entry.port,
            key_path=entry.key_path or self._key(),
            known_hosts=entry.known_hosts or self.config.known_hosts,
            host_key_policy=self.config.host_key_policy,
            docker_socket=entry.docker_socket,
            connect_timeout_s=self.config.connect_timeout_s,
        )

    def _key(self) -> str | None:
        if self.config.ssh_conn_id:
            if self._key_path is None:
                self._key_path = key_file_from_connection(self.config.ssh_conn_id)
            return self._key_path
        return self.config.key_path

    def host(self, entry: SshHostConfig, lock: str | None = None) -> Host:
        endpoint = self.endpoint(entry)
        return Host(
            provisioner="ssh",
            name=entry.name,
            docker_url=f"ssh://{entry.user}@{entry.address}:{entry.port}",
            address=entry.address,
            ssh=endpoint.to_dict(),
            publish_address=entry.publish_address,
            publish_port=entry.server_port,
            lock=lock,
            server_cpuset=entry.server_cpuset,
            client_cpuset=entry.client_cpuset,
        )

    def acquire(self, labels: dict[str, str]) -> Host:
        busy: list[str] = []
        unreachable: list[str] = []
        for entry in self.config.hosts:
            endpoint = self.endpoint(entry)
            endpoint.preflight()
            lock = entry.lock_path or self.config.lock_path
            try:
                holder = self._take(endpoint, lock, labels)
            except EmbenchError as exc:
                unreachable.append(f"{entry.name}: {exc}")
                continue
            if holder is None:
                log.info("ssh: took host %s (%s)", entry.name, endpoint.target)
                return self.host(entry, lock)
            busy.append(f"{entry.name} (held by {holder})")
        raise EmbenchError(
            "no ssh host is free: "
            + "; ".join(
                [*(f"busy: {b}" for b in busy), *(f"unreachable: {u}" for u in unreachable)]
            )
        )

    def _take(self, endpoint: SshEndpoint, lock: str, labels: dict[str, str]) -> str | None:
        """Take the lock; None when taken, else who holds it. Only a lock of this deployment
        can be judged (its runs are the ones Airflow here knows): another's is never broken."""
        # the slot too: the run's other hosts must not take this one as theirs
        mine = {k: labels.get(k, "") for k in ("deployment", "dag_id", "run_id", "host_slot")}
        holder = json.dumps(mine, sort_keys=True)
        path = shlex.quote(lock)
        take = (
            f"mkdir {path} 2>/dev/null && printf %s {shlex.quote(holder)} > {path}/holder "
            f"&& echo TAKEN || cat {path}/holder 2>/dev/null"
        )
        for _ in range(2):  # a second try after breaking a dead run's lock
            done = endpoint.run(take, timeout_s=endpoint.connect_timeout_s + 20)
            out = done.stdout.strip()
            if out == "TAKEN":
                return None
            try:
                held = json.loads(out or "{}")
            except ValueError:
                held = {}
            if held == mine:
                return None  # our own run took it (a retried provision)
            dead = (
                self.run_is_live is not None
                and held.get("deployment", "") == mine["deployment"]
                and not self.run_is_live(str(held.get("dag_id", "")), str(held.get("run_id", "")))
            )
            if not dead:
                holder = " ".join(str(held.get(k, "?")) for k in ("deployment", "dag_id", "run_id"))
                return holder + (f" host slot {held['host_slot']}" if held.get("host_slot") else "")
            log.warning(
                "ssh: breaking %s's lock on %s: its run is no longer alive", out, endpoint.target
            )
            endpoint.run(f"rm -rf {shlex.quote(lock)}", timeout_s=endpoint.connect_timeout_s + 20)
        return "a run that keeps taking it"

    def release(self, host: Host) -> None:
        """Give the lock back. Best effort when the host cannot be reached: the next run breaks
        a lock whose run is no longer alive."""
        if host.provisioner != "ssh" or not host.ssh or not host.lock:
            return
        endpoint = SshEndpoint(**host.ssh)
        try:
            endpoint.run(
                f"rm -rf {shlex.quote(host.lock)}", timeout_s=endpoint.connect_timeout_s + 20
            )
            log.info("ssh: released host %s", host.name)
        except EmbenchError as exc:
            log.warning(
                "ssh: could not release the lock on %s (%s); the next run breaks it", host.name, exc
            )

    def sweep_dead(self, run_is_live: RunIsLive) -> list[str]:
        return []  # a dead run's lock is broken by the next acquire that finds it


def key_file_from_connection(conn_id: str) -> str:
    """The private key of an Airflow connection (extra `private_key`, or `key_file`) as a file
    only this process's user can read; the key itself is never logged."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    extra = connection.extra_dejson
    if extra.get("key_file"):
        return str(extra["key_file"])
    key = extra.get("private_key")
    if not key:
        raise EmbenchError(
            f"Airflow connection {conn_id!r} has neither a `private_key` nor a `key_file` extra"
        )
    directory = tempfile.mkdtemp(prefix="embench-key-")
    path = os.path.join(directory, "id")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(str(key).replace("\\n", "\n").strip() + "\n")
    return path
