"""The provisioner interface and the Host record that travels between tasks (as XCom)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

ProvisionerKind = Literal["local", "ec2"]


@dataclass(frozen=True)
class Host:
    provisioner: ProvisionerKind
    name: str  # hostname, or the EC2 instance id
    docker_url: str  # the host's Docker daemon: unix:///var/run/docker.sock, ssh://user@ip
    address: str  # where the client reaches a port published on this host
    instance_id: str | None = None
    region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Host:
        return cls(**data)


class Provisioner(Protocol):
    kind: ProvisionerKind

    def acquire(self, labels: dict[str, str]) -> Host:
        """A host ready to run containers, tagged with `labels` (dag id, run id)."""
        ...

    def release(self, host: Host) -> None:
        """Give the host back; idempotent, and safe to call for a host half-created."""
        ...

    def sweep(self, labels: dict[str, str]) -> list[str]:
        """Release every host still tagged with `labels`; returns what it released."""
        ...
