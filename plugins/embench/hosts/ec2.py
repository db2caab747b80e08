"""The ec2 provisioner: one instance per run, launched from the launch template terraform/
defines, reached over SSH (Docker at ssh://USER@IP), terminated when the run ends.

AWS access goes through the amazon provider's EC2Hook, so Airflow connections (aws_conn_id,
its credentials, region and `endpoint_url` extra) apply. No instance outlives a failure: if
anything goes wrong after RunInstances, the instance is terminated before the error is raised.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from embench.errors import EmbenchError
from embench.hosts.base import Host
from embench.hosts.ssh import SshEndpoint
from embench.launch.docker_server import RunIsLive, deployment_name

if TYPE_CHECKING:
    from embench.config.schema import Ec2HostConfig

log = logging.getLogger(__name__)

# What the provisioner reads from `terraform output -json`: terraform/outputs.tf defines exactly
# these (tests/terraform checks both directions against this tuple).
TERRAFORM_OUTPUTS: tuple[str, ...] = (
    "launch_template_id",
    "launch_template_version",
    "region",
    "ssh_user",
    "instance_type",
    "ready_marker",
)
MANAGED_TAG_KEY = "embench:managed"
MANAGED_TAG_VALUE = "true"
LAUNCH_TAG_KEY = (
    "embench:launch"  # unique per acquire: finds an instance whose launch answer was lost
)
_LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
_NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


@dataclass(frozen=True)
class TerraformOutputs:
    """The part of terraform/'s outputs the provisioner uses."""

    launch_template_id: str
    launch_template_version: str
    region: str
    ssh_user: str
    instance_type: str
    ready_marker: str

    @classmethod
    def load(cls, path: Path) -> TerraformOutputs:
        """Read `terraform output -json > PATH` (or a flat {name: value} object)."""
        create = (
            "create it with `terraform -chdir=terraform apply` and then "
            f"`terraform -chdir=terraform output -json > {path}` (see terraform/README.md)"
        )
        if not path.is_file():
            raise EmbenchError(f"{path}: terraform outputs file not found; {create}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EmbenchError(f"{path}: cannot read terraform outputs ({exc}); {create}") from exc
        if not isinstance(raw, dict):
            raise EmbenchError(f"{path}: expected a JSON object of terraform outputs; {create}")
        values: dict[str, str] = {}
        for key in TERRAFORM_OUTPUTS:
            if key not in raw:
                raise EmbenchError(
                    f"{path}: terraform output {key!r} is missing; apply this version of "
                    "terraform/ and export again: "
                    f"`terraform -chdir=terraform output -json > {path}`"
                )
            entry = raw[key]
            value = entry.get("value") if isinstance(entry, dict) else entry
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(int(value))
            if not isinstance(value, str) or not value.strip():
                raise EmbenchError(
                    f"{path}: terraform output {key!r} must be a non-empty string, got {value!r}"
                )
            values[key] = value
        return cls(**values)


class ReadinessProbe(Protocol):
    """Decides when a freshly running instance can take containers."""

    def preflight(self) -> None:
        """Fail before anything is launched when the probe cannot work (e.g. no SSH key)."""
        ...

    def wait_ready(self, address: str, user: str, ready_marker: str, timeout_s: float) -> None:
        """Return once the host is ready; raise EmbenchError when `timeout_s` passes first."""
        ...


class SshReadinessProbe:
    """Waits over SSH until user_data's ready marker exists and Docker answers the SSH user."""

    def __init__(
        self,
        key_path: str | Path,
        *,
        interval_s: float = 5.0,
        connect_timeout_s: int = 10,
        ssh_binary: str = "ssh",
        known_hosts: str | Path | None = None,
        pinned: bool = False,
    ) -> None:
        self.key_path = Path(key_path).expanduser()
        # None: ssh's default (~/.ssh/known_hosts).
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        # pinned: the provisioner wrote the instance's host keys (from its console output)
        # into known_hosts; anything else is refused. Else the first key seen is recorded.
        self.pinned = pinned
        self.interval_s = interval_s
        self.connect_timeout_s = connect_timeout_s
        self.ssh_binary = ssh_binary

    def preflight(self) -> None:
        if not self.key_path.is_file():
            raise EmbenchError(
                f"{self.key_path}: SSH private key for the ec2 hosts not found; put the key of "
                "terraform's key_name there, or set host.ec2.ssh_key_path in benchmark.yaml"
            )

    def wait_ready(self, address: str, user: str, ready_marker: str, timeout_s: float) -> None:
        options = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if not self.pinned:
            # A new instance may reuse an address whose old host key is still known: forget
            # it, or ssh would refuse the new key. accept-new then records it.
            forget_host_key(address, self.known_hosts)
        remote = (
            f"test -f {shlex.quote(ready_marker)} && docker info --format '{{{{.ServerVersion}}}}'"
        )
        command = [
            self.ssh_binary,
            "-i",
            str(self.key_path),
            *options,
            "-o",
            f"ConnectTimeout={self.connect_timeout_s}",
            "-o",
            f"StrictHostKeyChecking={'yes' if self.pinned else 'accept-new'}",
            f"{user}@{address}",
            remote,
        ]
        deadline = time.monotonic() + timeout_s
        last = "no attempt made"
        while True:
            try:
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=self.connect_timeout_s + 30,
                )
                if done.returncode == 0:
                    log.info("host %s ready (Docker %s)", address, done.stdout.strip())
                    return
                last = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            except subprocess.TimeoutExpired:
                last = "ssh did not finish in time"
            if time.monotonic() + self.interval_s > deadline:
                raise EmbenchError(
                    f"host {user}@{address} not ready after {timeout_s:.0f} s "
                    f"(waiting for {ready_marker} and `docker info`); last attempt: {last}"
                )
            time.sleep(self.interval_s)


class Ec2Provisioner:
    kind = "ec2"

    def __init__(
        self,
        outputs_path: str | Path,
        *,
        aws_conn_id: str | None = "aws_default",
        region: str | None = None,
        instance_type: str | None = None,
        ready_timeout_s: float = 600.0,
        running_timeout_s: float = 600.0,
        terminate_timeout_s: float = 600.0,
        poll_interval_s: float = 5.0,
        probe: ReadinessProbe | None = None,
        ssh_key_path: str | Path = "~/.ssh/embench-benchmark.pem",
        known_hosts: str | Path | None = "~/.ssh/embench_ec2_known_hosts",
        host_key_policy: str = "console",
        address_type: str = "public",
        docker_socket: str = "/var/run/docker.sock",
        server_port: int | None = 8080,
    ) -> None:
        self.outputs_path = Path(outputs_path)
        self.aws_conn_id = aws_conn_id
        self.region = region
        self.instance_type = instance_type
        self.ready_timeout_s = ready_timeout_s
        self.running_timeout_s = running_timeout_s
        self.terminate_timeout_s = terminate_timeout_s
        self.poll_interval_s = poll_interval_s
        self.ssh_key_path = str(Path(ssh_key_path).expanduser())
        self.known_hosts = str(Path(known_hosts).expanduser()) if known_hosts else None
        self.host_key_policy = host_key_policy
        self.address_type = address_type
        self.docker_socket = docker_socket
        self.server_port = server_port
        self.probe: ReadinessProbe = probe or SshReadinessProbe(
            ssh_key_path, known_hosts=self.known_hosts, pinned=host_key_policy == "console"
        )
        self._outputs: TerraformOutputs | None = None
        self._clients: dict[str | None, Any] = {}

    @classmethod
    def from_config(
        cls, config: Ec2HostConfig, config_dir: Path | None = None, **overrides: Any
    ) -> Ec2Provisioner:
        """Build from benchmark.yaml's host.ec2; terraform_outputs is relative to config_dir."""
        outputs_path = Path(os.path.expanduser(config.terraform_outputs))
        if not outputs_path.is_absolute():
            if config_dir is None:
                from embench.config import default_config_dir

                config_dir = default_config_dir()
            outputs_path = (Path(config_dir) / outputs_path).resolve()
        settings: dict[str, Any] = {
            "aws_conn_id": config.aws_conn_id,
            "region": config.region,
            "instance_type": config.instance_type,
            "ready_timeout_s": config.ready_timeout_s,
            "ssh_key_path": config.ssh_key_path,
            "known_hosts": config.known_hosts,
            "host_key_policy": config.host_key_policy,
            "address_type": config.address_type,
            "docker_socket": config.docker_socket,
            "server_port": config.server_port,
        }
        settings.update(overrides)
        return cls(outputs_path, **settings)

    # -- the Provisioner protocol --------------------------------------------------------------

    def acquire(self, labels: dict[str, str]) -> Host:
        outputs = self.outputs()
        self.probe.preflight()
        tags = _tags(labels)
        region = self.region or outputs.region
        client = self._client(region)
        token = uuid.uuid4().hex
        tag_list = [{"Key": k, "Value": v} for k, v in {**tags, LAUNCH_TAG_KEY: token}.items()]
        try:
            response = client.run_instances(
                LaunchTemplate={
                    "LaunchTemplateId": outputs.launch_template_id,
                    "Version": outputs.launch_template_version,
                },
                InstanceType=self.instance_type or outputs.instance_type,
                MinCount=1,
                MaxCount=1,
                # An instance that shuts itself down (user_data's deadline) is gone, not stopped.
                InstanceInitiatedShutdownBehavior="terminate",
                ClientToken=token,  # botocore retries of this call launch at most one instance
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": tag_list},
                    {"ResourceType": "volume", "Tags": tag_list},
                ],
            )
            instance_id: str = response["Instances"][0]["InstanceId"]
        except BaseException as exc:
            # The call may have launched an instance whose answer never arrived.
            self._terminate_by_launch_token(client, token)
            if isinstance(exc, Exception):
                raise EmbenchError(
                    f"ec2: cannot launch from launch template {outputs.launch_template_id} "
                    f"(version {outputs.launch_template_version}) in {region}: {exc}"
                ) from exc
            raise
        log.info("ec2: launched %s in %s, tags %s", instance_id, region, tags)
        try:
            return self._await_host(client, instance_id, region, outputs)
        except BaseException as exc:
            outcome = self._terminate_after_failure(client, instance_id)
            if isinstance(exc, Exception):
                raise EmbenchError(
                    f"ec2: instance {instance_id} in {region} did not become a usable host: "
                    f"{exc} ({outcome})"
                ) from exc
            raise

    def release(self, host: Host) -> None:
        if host.provisioner != "ec2" or not host.instance_id:
            return
        client = self._client(host.region or self.region)
        self._terminate(client, [host.instance_id])

    def sweep_dead(self, run_is_live: RunIsLive) -> list[str]:
        """Terminate this project's instances whose DAG run is no longer alive (a scheduler
        killed mid-run, a stack taken down); a live run's instance is never touched."""
        client = self._client(self._sweep_region())
        deployment = deployment_name()
        filters = [
            {"Name": f"tag:{MANAGED_TAG_KEY}", "Values": [MANAGED_TAG_VALUE]},
            {"Name": "tag:deployment", "Values": [deployment]},
            {"Name": "instance-state-name", "Values": _LIVE_STATES},
        ]
        dead: list[str] = []
        for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    if tags.get("deployment") != deployment:
                        continue  # filter values are patterns ('*', '?'): exact matches only
                    if not run_is_live(tags.get("dag_id", ""), tags.get("run_id", "")):
                        dead.append(instance["InstanceId"])
        if dead:
            log.warning("ec2: terminating %s: their runs are no longer alive", dead)
            self._terminate(client, dead)
        return dead

    # -- helpers -------------------------------------------------------------------------------

    def outputs(self) -> TerraformOutputs:
        if self._outputs is None:
            self._outputs = TerraformOutputs.load(self.outputs_path)
        return self._outputs

    def _sweep_region(self) -> str | None:
        if self.region:
            return self.region
        try:
            return self.outputs().region
        except EmbenchError:
            return None  # the connection's region

    def _client(self, region: str | None) -> Any:
        if region not in self._clients:
            from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

            hook = EC2Hook(aws_conn_id=self.aws_conn_id, region_name=region, api_type="client_type")
            self._clients[region] = hook.conn
        return self._clients[region]

    def _waiter_config(self, timeout_s: float) -> dict[str, Any]:
        delay = max(self.poll_interval_s, 0.01)
        return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout_s / delay))}

    def _await_host(
        self, client: Any, instance_id: str, region: str, outputs: TerraformOutputs
    ) -> Host:
        from botocore.exceptions import WaiterError

        try:
            client.get_waiter("instance_running").wait(
                InstanceIds=[instance_id], WaiterConfig=self._waiter_config(self.running_timeout_s)
            )
        except WaiterError as exc:
            state, reason = _state(client, instance_id)
            raise EmbenchError(
                f"not running after {self.running_timeout_s:.0f} s (state {state}: {reason})"
            ) from exc
        instance = _describe(client, instance_id)
        if self.address_type == "private":
            address = instance.get("PrivateIpAddress")
        else:
            address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
        if not address:
            raise EmbenchError(f"running but has no {self.address_type} IP address")
        if self.host_key_policy == "console":
            self._pin_host_keys(client, instance_id, address)
        ssh = SshEndpoint(
            address=address,
            user=outputs.ssh_user,
            key_path=self.ssh_key_path,
            known_hosts=self.known_hosts,
            # Pinned from the console output, or recorded by the readiness probe's first
            # connection: either way checked from then on.
            host_key_policy="pinned" if self.host_key_policy == "console" else "accept-new",
            docker_socket=self.docker_socket,
        )
        host = Host(
            provisioner="ec2",
            name=instance_id,
            docker_url=f"ssh://{outputs.ssh_user}@{address}",
            address=address,
            instance_id=instance_id,
            region=region,
            ssh=ssh.to_dict(),
            publish_address="0.0.0.0",
            publish_port=self.server_port,
            instance_type=instance.get("InstanceType"),
        )
        self.probe.wait_ready(address, outputs.ssh_user, outputs.ready_marker, self.ready_timeout_s)
        return host

    def _pin_host_keys(self, client: Any, instance_id: str, address: str) -> None:
        """Read the instance's SSH host keys from its console output (cloud-init prints them)
        and pin them for `address` in known_hosts: no key is trusted on first use."""
        if not self.known_hosts:
            raise EmbenchError("host.ec2.known_hosts must name a file to pin the host keys in")
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            output = client.get_console_output(InstanceId=instance_id, Latest=True)
            keys = host_keys_from_console(str(output.get("Output") or ""))
            if keys:
                break
            if time.monotonic() + self.poll_interval_s > deadline:
                raise EmbenchError(
                    f"no SSH host keys in the console output after {self.ready_timeout_s:.0f} s: "
                    "cloud-init prints them at first boot; where the console output is not "
                    "available, set host.ec2.host_key_policy: accept-new"
                )
            time.sleep(self.poll_interval_s)
        forget_host_key(address, Path(self.known_hosts))
        path = Path(self.known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for key in keys:
                handle.write(f"{address} {key}\n")
        log.info("ec2: pinned %d host key(s) of %s from its console output", len(keys), instance_id)

    def _terminate(self, client: Any, instance_ids: list[str]) -> None:
        """Terminate and wait until terminated; instances already gone count as released."""
        from botocore.exceptions import ClientError, WaiterError

        live: list[str] = []
        for instance_id in instance_ids:
            try:
                client.terminate_instances(InstanceIds=[instance_id])
                live.append(instance_id)
            except ClientError as exc:
                if _error_code(exc) not in _NOT_FOUND_CODES:
                    raise
                log.info("ec2: %s not found; nothing to terminate", instance_id)
        if not live:
            return
        try:
            client.get_waiter("instance_terminated").wait(
                InstanceIds=live, WaiterConfig=self._waiter_config(self.terminate_timeout_s)
            )
        except WaiterError as exc:
            if _error_code(exc.last_response) in _NOT_FOUND_CODES:
                return
            raise EmbenchError(
                f"ec2: termination of {', '.join(live)} requested but not confirmed after "
                f"{self.terminate_timeout_s:.0f} s ({exc}); check the EC2 console"
            ) from exc
        log.info("ec2: terminated %s", live)

    def _terminate_after_failure(self, client: Any, instance_id: str) -> str:
        try:
            self._terminate(client, [instance_id])
        except Exception as exc:
            log.error("ec2: could not terminate %s after a failure: %s", instance_id, exc)
            return f"termination FAILED: {exc}; a sweep by labels retries it"
        return "instance terminated"

    def _terminate_by_launch_token(self, client: Any, token: str) -> None:
        try:
            filters = [{"Name": f"tag:{LAUNCH_TAG_KEY}", "Values": [token]}]
            reservations = client.describe_instances(Filters=filters).get("Reservations", [])
            ids = [i["InstanceId"] for r in reservations for i in r.get("Instances", [])]
            if ids:
                log.warning("ec2: launch answer lost; terminating %s", ids)
                self._terminate(client, ids)
        except Exception as exc:  # best effort; the sweep by labels is the backstop
            log.warning("ec2: cannot look up instances of launch token %s: %s", token, exc)


def host_keys_from_console(output: str) -> list[str]:
    """ "TYPE BASE64" of each key between cloud-init's SSH HOST KEY KEYS markers."""
    with contextlib.suppress(ValueError):
        decoded = base64.b64decode(output, validate=True).decode("utf-8")
        if "\n" in decoded:
            output = decoded
    keys: list[str] = []
    inside = False
    for line in output.splitlines():
        text = line.strip()
        if text.endswith("-----BEGIN SSH HOST KEY KEYS-----"):
            inside, keys = True, []
        elif text.endswith("-----END SSH HOST KEY KEYS-----"):
            inside = False
        elif inside:
            parts = text.split()
            if len(parts) >= 2 and (parts[0].startswith(("ssh-", "ecdsa-", "sk-"))):
                keys.append(f"{parts[0]} {parts[1]}")
    return keys


def forget_host_key(address: str, known_hosts: Path | None) -> None:
    """Drop the keys recorded for `address` (a new instance may reuse an old address)."""
    command = ["ssh-keygen", "-R", address]
    if known_hosts is not None:
        if not known_hosts.exists():
            return
        command += ["-f", str(known_hosts)]
    subprocess.run(command, capture_output=True, check=False, timeout=30)


def _tags(labels: dict[str, str]) -> dict[str, str]:
    tags = {str(k): str(v) for k, v in labels.items()}
    for key, value in tags.items():
        if not key or len(key) > 128 or key.lower().startswith("aws:") or len(value) > 256:
            raise EmbenchError(
                f"label {key!r}={value!r} cannot be an EC2 tag (key 1-128 characters, "
                "not starting with 'aws:'; value at most 256)"
            )
    tags[MANAGED_TAG_KEY] = MANAGED_TAG_VALUE
    return tags


def _describe(client: Any, instance_id: str) -> dict[str, Any]:
    reservations = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    instances: Iterable[dict[str, Any]] = (i for r in reservations for i in r["Instances"])
    for instance in instances:
        return instance
    raise EmbenchError(f"instance {instance_id} not found")


def _state(client: Any, instance_id: str) -> tuple[str, str]:
    try:
        instance = _describe(client, instance_id)
    except Exception as exc:
        return "unknown", str(exc)
    state = instance.get("State", {}).get("Name", "unknown")
    reason = instance.get("StateReason", {}).get("Message") or instance.get(
        "StateTransitionReason", ""
    )
    return state, reason or "no reason given"


def _error_code(error: Any) -> str | None:
    response = getattr(error, "response", error)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None
