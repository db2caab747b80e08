"""The provisioner interface and the Host record that travels between tasks (as XCom)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from embench.launch.docker_server import RunIsLive

ProvisionerKind = Literal["local", "ssh", "ec2"]


@dataclass(frozen=True)
class Host:
    """A machine with a Docker daemon: this one, or one reached over SSH (`ssh` holds the
    SshEndpoint's fields; its daemon is reached through a tunnel of the OpenSSH client)."""

    provisioner: ProvisionerKind
    name: str  # hostname, the static host's name, or the EC2 instance id
    docker_url: str  # this machine's daemon (unix://...), or ssh://user@address for display
    address: str  # where the worker reaches a port published on this host
    instance_id: str | None = None
    region: str | None = None
    ssh: dict[str, Any] | None = None  # None: this machine
    publish_address: str = "127.0.0.1"  # the host's interface the server's port is bound to
    publish_port: int | None = None  # the server's port there (None: any free port)
    lock: str | None = None  # the lock this run holds on the host (static ssh hosts)
    instance_type: str | None = None  # what the cloud launched (ec2)
    # the host's own CPUs for the server and the client (None: benchmark.yaml's cpusets)
    server_cpuset: str | None = None
    client_cpuset: str | None = None

    @property
    def remote(self) -> bool:
        return self.ssh is not None

    @property
    def docker_socket(self) -> str:
        """The daemon's socket path on the host (mounted into the client for its stats)."""
        if self.ssh:
            return str(self.ssh.get("docker_socket") or "/var/run/docker.sock")
        if self.docker_url.startswith("unix://"):
            return self.docker_url.removeprefix("unix://")
        return "/var/run/docker.sock"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Host:
        return cls(**data)


class Provisioner(Protocol):
    kind: ProvisionerKind

    def acquire(self, labels: dict[str, str]) -> Host:
        """A host ready to run containers, tagged with `labels` (dag id, run id). A failure
        after something was created or taken gives it back before raising."""
        ...

    def release(self, host: Host) -> None:
        """Give the host back; idempotent, and safe to call for a host half-created."""
        ...

    def sweep_dead(self, run_is_live: RunIsLive) -> list[str]:
        """Release the hosts of runs no longer alive (never a live run's); returns them."""
        ...
