"""`embench containers sweep` and `embench hosts sweep`: remove what DAG runs no longer alive
left behind (a stack taken down mid-run, a scheduler killed): their containers on a Docker
host, their EC2 instances. Each run's setup does the same at its start; these are the
on-demand forms, for an operator or the stack's init. Whether a run is alive is asked of
Airflow's metadata database."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from embench.cli.options import add_json
from embench.console import stdout


def add_commands(commands: Any) -> None:
    containers = commands.add_parser("containers", help="the pipeline's containers on a host")
    actions = containers.add_subparsers(dest="action", required=True, metavar="ACTION")
    sweep = actions.add_parser(
        "sweep", help="remove containers of DAG runs that are no longer queued or running"
    )
    sweep.add_argument(
        "--docker-url", help="Docker daemon (default: host.docker_url, DOCKER_HOST or the socket)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="list what would be removed")
    add_json(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    hosts = commands.add_parser("hosts", help="the benchmark hosts the pipeline provisions")
    host_actions = hosts.add_subparsers(dest="action", required=True, metavar="ACTION")
    host_sweep = host_actions.add_parser(
        "sweep", help="terminate the EC2 instances of DAG runs that are no longer alive"
    )
    add_json(host_sweep)
    host_sweep.set_defaults(handler=cmd_hosts_sweep)


def _airflow_configured() -> None:
    if "AIRFLOW_HOME" not in os.environ:  # the embedded Airflow of `embench run`
        from embench.local_run import airflow_environment

        os.environ.update(airflow_environment())


def cmd_hosts_sweep(args: argparse.Namespace) -> int:
    from embench import live_runs
    from embench.config import load_config
    from embench.hosts import make_provisioner

    _airflow_configured()
    config = load_config(args.config_dir)
    provisioner = make_provisioner(config.benchmark.host, "ec2", config.config_dir)
    gone = provisioner.sweep_dead(live_runs.from_metadata_db())
    if args.json:
        print(json.dumps({"terminated": gone}))
    else:
        stdout.print(f"terminated {len(gone)} instance(s) of runs no longer alive", highlight=False)
        for instance_id in gone:
            stdout.print(f"  {instance_id}", highlight=False)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from embench import live_runs
    from embench.config import load_config
    from embench.hosts.local import LocalProvisioner
    from embench.launch.docker_server import deployment_name, sweep_stale_containers
    from embench.launch.site import docker_api

    _airflow_configured()
    docker_url = (
        args.docker_url
        or LocalProvisioner(load_config(args.config_dir).benchmark.host.docker_url).docker_url
    )
    stale = sweep_stale_containers(
        docker_api(docker_url), live_runs.from_metadata_db(), dry_run=args.dry_run
    )
    if args.json:
        print(
            json.dumps(
                {"deployment": deployment_name(), "dry_run": args.dry_run, "containers": stale}
            )
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    stdout.print(
        f"{verb} {len(stale)} container(s) of runs no longer alive "
        f"(deployment {deployment_name()!r}, {docker_url})",
        highlight=False,
    )
    for item in stale:
        stdout.print(f"  {item['name']}  ({item['dag_id']} {item['run_id']})", highlight=False)
    return 0
