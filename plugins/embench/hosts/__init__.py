"""Benchmark hosts: where the server and the client run. `local` is this machine; `ec2`
launches an instance from the launch template Terraform defines and terminates it after."""

from embench.hosts.base import Host, Provisioner
from embench.hosts.factory import make_provisioner

__all__ = ["Host", "Provisioner", "make_provisioner"]
