"""Build the provisioner a run asked for, from benchmark.yaml's `host:` section."""

from __future__ import annotations

from pathlib import Path

from embench.config.schema import HostConfig
from embench.hosts.base import Provisioner
from embench.hosts.local import LocalProvisioner
from embench.launch.docker_server import RunIsLive


def make_provisioner(
    config: HostConfig,
    kind: str | None = None,
    config_dir: Path | None = None,
    run_is_live: RunIsLive | None = None,
    instance_type: str | None = None,
) -> Provisioner:
    """`config_dir` resolves relative paths in the config (terraform outputs); `run_is_live`
    lets the ssh provisioner break the lock of a run that is no longer alive; `instance_type`
    (ec2) is the slot's type of the instance-type axis."""
    kind = kind or config.provisioner
    if kind == "local":
        return LocalProvisioner(docker_url=config.docker_url)
    if kind == "ssh":
        from embench.hosts.ssh import SshProvisioner

        return SshProvisioner(config.ssh, run_is_live)
    if kind == "ec2":
        from embench.hosts.ec2 import Ec2Provisioner  # needs the amazon provider

        overrides = {"instance_type": instance_type} if instance_type else {}
        return Ec2Provisioner.from_config(config.ec2, config_dir or Path.cwd(), **overrides)
    raise ValueError(f"unknown provisioner {kind!r}; expected 'local', 'ssh' or 'ec2'")
