"""The ec2 provisioner against moto's server mode on loopback (no AWS is reached).

Access goes through the amazon provider's EC2Hook and an Airflow connection given as an
environment variable whose `endpoint_url` extra points at moto. Moto runs no real machine, so
the SSH readiness probe is replaced by a fake one; the SSH probe itself is tested with a fake
`ssh` program.
"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("airflow.providers.amazon")
moto_server = pytest.importorskip("moto.server")


from embench.config.schema import Ec2HostConfig  # noqa: E402
from embench.errors import EmbenchError  # noqa: E402
from embench.hosts.base import Host  # noqa: E402
from embench.hosts.ec2 import (  # noqa: E402
    MANAGED_TAG_KEY,
    TERRAFORM_OUTPUTS,
    Ec2Provisioner,
    SshReadinessProbe,
    TerraformOutputs,
)
from tests.conftest import MOTO_CONN_ID as CONN_ID  # noqa: E402
from tests.conftest import MOTO_REGION as REGION  # noqa: E402


@pytest.fixture(scope="module")
def launch_template(ec2: Any) -> dict[str, str]:
    """What terraform/ would create: a subnet, a security group, a launch template."""
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName="embench-benchmark-host", Description="ssh only", VpcId=vpc
    )["GroupId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName="embench-benchmark-host",
        LaunchTemplateData={
            "ImageId": image,
            "InstanceType": "c7i.4xlarge",
            "NetworkInterfaces": [
                {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group]},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        },
    )["LaunchTemplate"]
    return {
        "launch_template_id": template["LaunchTemplateId"],
        "launch_template_version": str(template["LatestVersionNumber"]),
        "subnet_id": subnet,
    }


@pytest.fixture
def outputs_file(tmp_path: Path, launch_template: dict[str, str]) -> Path:
    """`terraform output -json` as terraform writes it."""
    values = {
        "launch_template_id": launch_template["launch_template_id"],
        "launch_template_version": launch_template["launch_template_version"],
        "region": REGION,
        "ssh_user": "ec2-user",
        "instance_type": "c7i.4xlarge",
        "ready_marker": "/var/lib/embench/ready",
    }
    path = tmp_path / "outputs.json"
    exported = {k: {"sensitive": False, "type": "string", "value": v} for k, v in values.items()}
    path.write_text(json.dumps(exported))
    return path


class FakeProbe:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, str, float]] = []

    def preflight(self) -> None:
        return None

    def wait_ready(self, address: str, user: str, ready_marker: str, timeout_s: float) -> None:
        self.calls.append((address, user, ready_marker, timeout_s))
        if self.error is not None:
            raise self.error


class Killed(BaseException):
    """Stands in for a task killed mid-acquire (AirflowTaskTimeout, SIGTERM)."""


def _provisioner(outputs: Path, probe: FakeProbe, **kwargs: Any) -> Ec2Provisioner:
    return Ec2Provisioner(
        outputs,
        aws_conn_id=CONN_ID,
        probe=probe,
        poll_interval_s=0.2,
        running_timeout_s=20,
        terminate_timeout_s=20,
        ready_timeout_s=5,
        **{"host_key_policy": "accept-new", **kwargs},
    )


def _labels() -> dict[str, str]:
    return {"dag_id": "embedding_benchmark", "run_id": f"manual__{uuid.uuid4().hex[:8]}"}


def _instances(ec2: Any, labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in labels.items()]
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}


def _state(ec2: Any, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def test_acquire_runs_a_tagged_instance_and_release_terminates_it(
    ec2: Any, outputs_file: Path, launch_template: dict[str, str]
) -> None:
    probe = FakeProbe()
    provisioner = _provisioner(outputs_file, probe)
    labels = _labels()

    host = provisioner.acquire(labels)

    assert host.provisioner == "ec2"
    assert host.instance_id and host.name == host.instance_id
    assert host.region == REGION
    assert host.docker_url == f"ssh://ec2-user@{host.address}"
    assert probe.calls == [(host.address, "ec2-user", "/var/lib/embench/ready", 5)]
    instances = _instances(ec2, labels)
    assert list(instances) == [host.instance_id]
    instance = instances[host.instance_id]
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceType"] == "c7i.4xlarge"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {**tags, **labels, MANAGED_TAG_KEY: "true"}
    assert host.address in {instance.get("PublicIpAddress"), instance.get("PrivateIpAddress")}
    # The Host travels between tasks as XCom.
    assert Host.from_dict(json.loads(json.dumps(host.to_dict()))) == host

    provisioner.release(host)
    assert _state(ec2, host.instance_id) == "terminated"
    provisioner.release(host)  # idempotent
    assert _state(ec2, host.instance_id) == "terminated"


def test_instance_type_from_config_overrides_terraform(ec2: Any, outputs_file: Path) -> None:
    provisioner = _provisioner(outputs_file, FakeProbe(), instance_type="c7i.2xlarge")
    host = provisioner.acquire(_labels())
    try:
        reservations = ec2.describe_instances(InstanceIds=[host.instance_id])["Reservations"]
        instance = reservations[0]["Instances"][0]
        assert instance["InstanceType"] == "c7i.2xlarge"
    finally:
        provisioner.release(host)


def test_failure_after_launch_terminates_the_instance(ec2: Any, outputs_file: Path) -> None:
    labels = _labels()
    provisioner = _provisioner(outputs_file, FakeProbe(EmbenchError("no ready marker")))

    with pytest.raises(EmbenchError) as caught:
        provisioner.acquire(labels)

    instances = _instances(ec2, labels)
    assert len(instances) == 1, "the failed acquire launched exactly one instance"
    (instance_id,) = instances
    assert _state(ec2, instance_id) == "terminated"
    message = str(caught.value)
    assert instance_id in message and "no ready marker" in message
    assert "instance terminated" in message


def test_kill_after_launch_terminates_and_reraises(ec2: Any, outputs_file: Path) -> None:
    labels = _labels()
    provisioner = _provisioner(outputs_file, FakeProbe(Killed("task timed out")))

    with pytest.raises(Killed):
        provisioner.acquire(labels)

    (instance_id,) = _instances(ec2, labels)
    assert _state(ec2, instance_id) == "terminated"


def test_launch_failure_is_explained_and_leaves_nothing(ec2: Any, tmp_path: Path) -> None:
    outputs = {k: f"x-{k}" for k in TERRAFORM_OUTPUTS}
    outputs |= {"launch_template_id": "lt-0123456789abcdef0", "region": REGION}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))  # a flat object is accepted too
    labels = _labels()

    with pytest.raises(EmbenchError, match="cannot launch from launch template lt-0123456789"):
        _provisioner(path, FakeProbe()).acquire(labels)
    assert _instances(ec2, labels) == {}


def test_release_of_an_unknown_instance_is_fine(outputs_file: Path) -> None:
    provisioner = _provisioner(outputs_file, FakeProbe())
    gone = Host("ec2", "i-0123456789abcdef0", "ssh://ec2-user@10.0.0.1", "10.0.0.1",
                instance_id="i-0123456789abcdef0", region=REGION)  # fmt: skip
    provisioner.release(gone)
    provisioner.release(Host("local", "here", "unix:///var/run/docker.sock", "127.0.0.1"))


def test_aws_endpoint_comes_from_the_airflow_connection(moto_endpoint: str) -> None:
    from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

    client = EC2Hook(aws_conn_id=CONN_ID, api_type="client_type").conn
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.region_name == REGION


# -- terraform outputs and configuration (no AWS) ---------------------------------------------


def test_missing_outputs_file_names_the_file_and_the_command(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    with pytest.raises(EmbenchError) as caught:
        Ec2Provisioner(path, probe=FakeProbe()).acquire(_labels())
    message = str(caught.value)
    assert str(path) in message and "not found" in message
    assert "terraform -chdir=terraform output -json >" in message


def test_missing_output_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    outputs = {k: {"value": "v"} for k in TERRAFORM_OUTPUTS if k != "ready_marker"}
    path.write_text(json.dumps(outputs))
    with pytest.raises(EmbenchError, match=r"outputs.json: terraform output 'ready_marker' is"):
        TerraformOutputs.load(path)


def test_from_config_resolves_outputs_relative_to_the_config_folder(tmp_path: Path) -> None:
    config = Ec2HostConfig(region="us-west-2", ready_timeout_s=42, instance_type="c7i.8xlarge")
    provisioner = Ec2Provisioner.from_config(config, tmp_path / "config")
    assert provisioner.outputs_path == (tmp_path / "terraform" / "outputs.json").resolve()
    assert provisioner.region == "us-west-2"
    assert provisioner.ready_timeout_s == 42
    assert provisioner.instance_type == "c7i.8xlarge"
    assert isinstance(provisioner.probe, SshReadinessProbe)
    assert provisioner.probe.key_path == Path("~/.ssh/embench-benchmark.pem").expanduser()


# -- the SSH readiness probe, with a fake ssh program -----------------------------------------


def _fake_ssh(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-ssh"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_ssh_probe_needs_the_key(tmp_path: Path) -> None:
    with pytest.raises(EmbenchError, match="SSH private key"):
        SshReadinessProbe(tmp_path / "absent.pem").preflight()


def test_ssh_probe_checks_marker_and_docker(tmp_path: Path) -> None:
    log = tmp_path / "ssh-args"
    ssh = _fake_ssh(tmp_path, f'printf "%s\\n" "$@" > {log}\necho 20.10.24\n')
    probe = SshReadinessProbe(
        tmp_path / "key.pem", ssh_binary=ssh, interval_s=0.05, known_hosts=tmp_path / "kh"
    )
    probe.wait_ready("192.0.2.10", "ec2-user", "/var/lib/embench/ready", timeout_s=5)
    args = log.read_text().splitlines()
    assert "ec2-user@192.0.2.10" in args
    assert "BatchMode=yes" in args and f"UserKnownHostsFile={tmp_path / 'kh'}" in args
    assert any("test -f /var/lib/embench/ready && docker info" in a for a in args)


def test_ssh_probe_gives_up_at_its_deadline(tmp_path: Path) -> None:
    ssh = _fake_ssh(tmp_path, 'echo "Connection refused" >&2\nexit 255\n')
    probe = SshReadinessProbe(
        tmp_path / "key.pem", ssh_binary=ssh, interval_s=0.05, known_hosts=tmp_path / "kh"
    )
    with pytest.raises(EmbenchError, match=r"not ready after 0 s .*Connection refused"):
        probe.wait_ready("192.0.2.10", "ec2-user", "/var/lib/embench/ready", timeout_s=0.2)


class LostAnswer:
    """An EC2 client whose RunInstances launches but whose answer never arrives."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def run_instances(self, **kwargs: Any) -> Any:
        self._client.run_instances(**kwargs)
        raise TimeoutError("read timed out")


def test_launch_whose_answer_is_lost_is_found_and_terminated(
    ec2: Any, outputs_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioner = _provisioner(outputs_file, FakeProbe())
    real = provisioner._client(REGION)
    monkeypatch.setattr(provisioner, "_client", lambda region: LostAnswer(real))
    labels = _labels()

    with pytest.raises(EmbenchError, match="read timed out"):
        provisioner.acquire(labels)

    (instance_id,) = _instances(ec2, labels)
    assert _state(ec2, instance_id) == "terminated"


CLOUD_INIT_CONSOLE = """\
[   12.345678] cloud-init[1234]: Cloud-init v. 22.2.2 running 'modules:final'
<14>Dec  3 09:00:00 ec2: #############################################################
<14>Dec  3 09:00:00 ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
<14>Dec  3 09:00:00 ec2: 256 SHA256:abc root@ip-10-0-0-1 (ECDSA)
<14>Dec  3 09:00:00 ec2: -----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@ip-10-0-0-1
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1kZXlrZXk= root@ip-10-0-0-1
-----END SSH HOST KEY KEYS-----
[   13.000000] cloud-init[1234]: Cloud-init v. 22.2.2 finished
"""


def test_host_keys_are_read_from_cloud_inits_console_output() -> None:
    import base64

    from embench.hosts.ec2 import host_keys_from_console

    expected = [
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1kZXlrZXk=",
    ]
    assert host_keys_from_console(CLOUD_INIT_CONSOLE) == expected
    encoded = base64.b64encode(CLOUD_INIT_CONSOLE.encode()).decode()  # as the API returns it
    assert host_keys_from_console(encoded) == expected
    assert host_keys_from_console("booting...\n") == []


def test_without_console_keys_the_pinned_policy_refuses_the_host(
    ec2: Any, outputs_file: Path, tmp_path: Path
) -> None:
    probe = FakeProbe()
    provisioner = _provisioner(
        outputs_file, probe, host_key_policy="console", known_hosts=tmp_path / "kh"
    )
    labels = _labels()
    with pytest.raises(EmbenchError, match="no SSH host keys in the console output"):
        provisioner.acquire(labels)
    assert probe.calls == [], "a host without pinned keys must not be connected to"
    (instance_id,) = _instances(ec2, labels)
    assert _state(ec2, instance_id) == "terminated"


def test_instances_terminate_themselves_when_they_shut_down(ec2: Any, outputs_file: Path) -> None:
    provisioner = _provisioner(outputs_file, FakeProbe())
    host = provisioner.acquire(_labels())
    try:
        behavior = ec2.describe_instance_attribute(
            InstanceId=host.instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )["InstanceInitiatedShutdownBehavior"]["Value"]
        assert behavior == "terminate"
    finally:
        provisioner.release(host)


def test_sweep_dead_terminates_only_instances_of_dead_runs_of_this_deployment(
    ec2: Any, outputs_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EMBENCH_DEPLOYMENT", deployment)
    provisioner = _provisioner(outputs_file, FakeProbe())
    dead, live = _labels(), _labels()
    other = {**_labels(), "deployment": f"{deployment}-other"}
    hosts = [provisioner.acquire({**labels, "deployment": deployment}) for labels in (dead, live)]
    hosts.append(provisioner.acquire(other))
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    unmanaged = ec2.run_instances(  # a dead run's tags, but not launched by embench
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": k, "Value": v} for k, v in {**dead, "deployment": deployment}.items()
                ],
            }
        ],
    )["Instances"][0]["InstanceId"]
    try:
        gone = provisioner.sweep_dead(lambda dag_id, run_id: run_id == live["run_id"])
        assert gone == [hosts[0].instance_id]
        assert _state(ec2, unmanaged) == "running"
        assert _state(ec2, str(hosts[0].instance_id)) == "terminated"
        assert _state(ec2, str(hosts[1].instance_id)) == "running"
        assert _state(ec2, str(hosts[2].instance_id)) == "running"
    finally:
        for host in hosts:
            provisioner.release(host)
        ec2.terminate_instances(InstanceIds=[unmanaged])
