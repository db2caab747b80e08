"""Build the provisioner a run asked for, from benchmark.yaml's `host:` section."""

from __future__ import annotations

from pathlib import Path

from embench.config.schema import HostConfig
from embench.hosts.base import Provisioner
from embench.hosts.local import LocalProvisioner


def make_provisioner(
    config: HostConfig, kind: str | None = None, config_dir: Path | None = None
) -> Provisioner:
    """`config_dir` resolves relative paths in the config (terraform outputs)."""
    kind = kind or config.provisioner
    if kind == "local":
        return LocalProvisioner(docker_url=config.docker_url)
    if kind == "ec2":
        from embench.hosts.ec2 import Ec2Provisioner  # needs the amazon provider

        return Ec2Provisioner.from_config(config.ec2, config_dir or Path.cwd())
    raise ValueError(f"unknown provisioner {kind!r}; expected 'local' or 'ec2'")
