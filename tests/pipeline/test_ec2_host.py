"""The DAG with the ec2 provisioner, end to end: moto stands in for the EC2 API (the one
stand-in allowed: AWS cannot be reached from here), and every instance it launches gets the
address of a test host (tests/testhost.py: its own sshd and Docker daemon), so that launch ->
ship -> benchmark -> store -> terminate runs for real. Afterwards no instance is left running
in moto and no container on the test host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from embench import steps
from embench.config import load_config
from tests.conftest import MOTO_CONN_ID, MOTO_REGION
from tests.pipeline.conftest import write_short_config
from tests.pipeline.test_pipeline_e2e import stored_runs
from tests.pipeline.test_remote_host import host_containers, shipped, summary_line

pytestmark = [pytest.mark.slow, pytest.mark.docker]
LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]


@pytest.fixture
def ec2_test_host(ec2: Any, test_hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(test host, benchmark.yaml's `host:` for the ec2 provisioner): the launch template and
    terraform outputs terraform/ would make, and moto's instances placed on the test host."""
    from moto.ec2.models.instances import Instance

    (host,) = test_hosts(1)
    vpc = ec2.create_vpc(CidrBlock="10.231.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.231.{host.index}.0/24")["Subnet"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"embench-{uuid.uuid4().hex[:8]}",
        LaunchTemplateData={
            "ImageId": image,
            "InstanceType": "c7i.4xlarge",
            "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnet["SubnetId"]}],
        },
    )["LaunchTemplate"]
    ready_marker = host.work_dir / "ready"  # what user_data writes once Docker is usable
    ready_marker.write_text("ready\n")
    outputs = {
        "launch_template_id": template["LaunchTemplateId"],
        "launch_template_version": str(template["LatestVersionNumber"]),
        "region": MOTO_REGION,
        "ssh_user": host.user,
        "instance_type": "c7i.4xlarge",
        "ready_marker": str(ready_marker),
    }
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps({k: {"value": v} for k, v in outputs.items()}))

    original = Instance.__init__

    def on_the_test_host(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        nic = self.nics[0]
        nic.private_ip_address, nic.public_ip = host.address, None

    monkeypatch.setattr(Instance, "__init__", on_the_test_host)
    config = {
        "provisioner": "ec2",
        "ec2": {
            "aws_conn_id": MOTO_CONN_ID,
            "terraform_outputs": str(outputs_file),
            "ssh_key_path": str(host.key_path),
            # moto prints no cloud-init console output to read host keys from.
            "host_key_policy": "accept-new",
            "known_hosts": str(tmp_path / "ec2_known_hosts"),
            "address_type": "private",
            "docker_socket": str(host.docker_socket),
            "ready_timeout_s": 120.0,
        },
    }
    return host, config


def live_instances(ec2: Any) -> list[str]:
    filters = [
        {"Name": "tag:embench:managed", "Values": ["true"]},
        {"Name": "instance-state-name", "Values": LIVE},
    ]
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def test_ec2_run_killed_mid_run_is_cleaned_up_and_the_next_run_completes(
    ec2, ec2_test_host, embench_run, pg_database, tmp_path: Path
):
    host, config = ec2_test_host
    db_url = pg_database()
    assert live_instances(ec2) == []

    # A worker killed (-9) mid-benchmark: its instance and its containers are left behind.
    env = {
        **os.environ,
        "EMBENCH_CONFIG_DIR": str(write_short_config(tmp_path / "kill-config", 30.0, config)),
        "EMBENCH_DATA_DIR": str(tmp_path / "data"),
        "EMBENCH_DB_URL": db_url,
        "HF_HUB_OFFLINE": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "embench.cli", "run", "--variants", "fp32", "--scenarios",
         "closed-c1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while "embench-client-" not in " ".join(host_containers(host)):
            assert worker.poll() is None, "the run ended before its client started"
            assert time.monotonic() < deadline, "the client never started on the host"
            time.sleep(0.5)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    (orphan,) = live_instances(ec2)
    assert any(n.startswith("embench-server-") for n in host_containers(host))

    # The next run terminates the dead run's instance, removes its containers, and runs.
    run = embench_run("--variants", "fp32", "--scenarios", "closed-c1", db_url=db_url, host=config)
    assert run.returncode == 0, run.output[-6000:]
    assert f"released host {orphan}: its run is no longer alive" in run.output
    assert "removed embench-server-" in run.output
    assert stored_runs(db_url, run.run_id()) == [("onnx", "fp32", 0, ["closed-c1"])]
    assert f"healthy at http://{host.address}:8080" in run.output
    ((seconds, report),) = shipped(run.output)
    assert live_instances(ec2) == [], "an instance was left running in moto"
    assert host_containers(host) == []
    instances = [
        (i["InstanceId"], i["State"]["Name"])
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i.get("PrivateIpAddress") == host.address
    ]
    print(
        f"\n{summary_line(run.output)}\nshipping {seconds} s {report}\n"
        f"moto's instances of this test: {instances}\n"
        f"docker ps -a on the test host afterwards:\n{host.docker('ps', '-a').stdout}"
    )


def test_an_unreachable_host_at_teardown_is_still_terminated(
    ec2, ec2_test_host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    host, config = ec2_test_host
    config_dir = write_short_config(tmp_path / "config", 1.0, config)
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    app = load_config(config_dir)
    ctx = steps.RunContext("embedding_benchmark", f"manual__{uuid.uuid4().hex[:8]}")
    params = {"models": ["all-minilm-l6-v2"], "provisioner": "ec2"}
    provisioned = steps.provision_host(params, 0, ctx, app, lambda dag_id, run_id: True)
    (instance_id,) = live_instances(ec2)
    assert provisioned["host"]["instance_id"] == instance_id

    host.block()  # SSH to the host times out from here on
    started = time.monotonic()
    steps.release_host(provisioned, ctx, app)  # must not raise, must terminate
    assert live_instances(ec2) == []
    assert time.monotonic() - started < 120


def test_each_instance_type_of_the_axis_gets_its_own_host_priced_from_the_table(
    ec2, ec2_test_host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """host.ec2.instance_types [c7i.large, c7g.large]: the plan puts the target on each type,
    each slot launches its own type, and the result labels carry the type (part of the
    history key) and its price from config/prices.yaml with the price's source."""
    _, config = ec2_test_host
    config["ec2"]["instance_types"] = ["c7i.large", "c7g.large"]
    config_dir = write_short_config(tmp_path / "config", 1.0, config)
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    app = load_config(config_dir)
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    params = {
        "models": ["all-minilm-l6-v2"],
        "runtimes": ["onnx"],
        "variants": ["fp32"],
        "provisioner": "ec2",
    }
    planned = steps.plan_targets(params, app)
    assert [(t["instance_type"], t["host_slot"]) for t in planned] == [
        ("c7i.large", 0),
        ("c7g.large", 1),
    ]
    provisioned = []
    try:
        for slot in (0, 1):
            ctx = steps.RunContext("embedding_benchmark", run_id, host_slot=slot)
            provisioned.append(
                steps.provision_host(params, slot, ctx, app, lambda dag_id, run_id: True)
            )
        launched = {
            i["InstanceId"]: i["InstanceType"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
        }
        first, second = provisioned
        assert launched[first["host"]["instance_id"]] == "c7i.large"
        assert launched[second["host"]["instance_id"]] == "c7g.large"
        labels = steps.host_labels(second, app)
        assert labels["instance_type"] == "c7g.large"
        assert labels["price_usd_per_hour"] == "0.0725"
        assert labels["price_source"].startswith("prices.yaml: https://github.com/scttfrdmn/")
    finally:
        for slot, done in enumerate(provisioned):
            ctx = steps.RunContext("embedding_benchmark", run_id, host_slot=slot)
            steps.release_host(done, ctx, app)
    assert live_instances(ec2) == []


def test_an_instance_type_that_never_becomes_a_host_fails_its_share_only(
    ec2, ec2_test_host, test_hosts, embench_run, pg_database, monkeypatch: pytest.MonkeyPatch
):
    """Two instance types, two hosts at once; every c7g.large instance comes up at an address
    that never answers (a blocked test host), so that slot's provisioning fails on every try
    (each try's instance terminated). The c7i.large share is measured and stored, the run
    ends failed, and its report names the target it never measured and why."""
    from moto.ec2.models.instances import Instance

    host, config = ec2_test_host
    (dead,) = test_hosts(1)
    dead.block()
    on_the_test_host = Instance.__init__

    def graviton_never_answers(self: Any, *args: Any, **kwargs: Any) -> None:
        on_the_test_host(self, *args, **kwargs)
        if self.instance_type == "c7g.large":
            self.nics[0].private_ip_address = dead.address

    monkeypatch.setattr(Instance, "__init__", graviton_never_answers)
    config["ec2"].update(instance_types=["c7i.large", "c7g.large"], ready_timeout_s=10.0)
    db_url = pg_database()
    earlier = {  # moto's instances of the module's earlier tests
        i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    run = embench_run(
        "--variants", "fp32", "--scenarios", "closed-c1", db_url=db_url, host=config
    )  # fmt: skip
    assert run.returncode != 0, run.output[-6000:]
    assert stored_runs(db_url, run.run_id()) == [("onnx", "fp32", 0, ["closed-c1"])]
    (report,) = (run.data_dir / "runs").rglob("report.md")
    text = report.read_text()
    (line,) = [row for row in text.splitlines() if row.startswith("| all-minilm-l6-v2/onnx/fp32")]
    assert "| 1 (c7g.large) |" in line, line
    assert "its host (slot 1) could not be provisioned: EmbenchError: ec2: instance" in line
    # the measured share is priced from the table: its cost per million embeddings
    assert "onnx/fp32 on c7i.large" in text and "| 0.0893 |" in text
    launched = [
        (i["InstanceType"], i["State"]["Name"])
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["InstanceId"] not in earlier
    ]
    assert ("c7i.large", "terminated") in launched
    assert [s for t, s in launched if t == "c7g.large"] == ["terminated"] * 3  # one per try
    assert live_instances(ec2) == []
    assert host_containers(host) == []
    print(f"\n{summary_line(run.output)}\nnot measured: {line}\ninstances: {launched}")
