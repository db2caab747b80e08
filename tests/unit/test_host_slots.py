"""Host slots: how many hosts a run takes, which targets each gets, their pools, and what the
report says of targets that were never measured."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from embench import host_slots
from embench.config import AppConfig
from embench.config.schema import HostConfig
from embench.errors import ConfigError
from embench.run_outcome import failures, not_measured, record_failure
from embench.steps import plan_targets


def host(**fields: object) -> HostConfig:
    return HostConfig.model_validate(fields)


def with_host(app_config: AppConfig, **fields: object) -> AppConfig:
    bench = app_config.benchmark.model_copy(update={"host": host(**fields)})
    return dataclasses.replace(app_config, benchmark=bench)


SSH_HOSTS = {"hosts": [{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"}]}


def test_slots_pools_and_task_ids():
    slots = host_slots.host_slots(
        host(parallel=2, ec2={"instance_types": ["c7i.large", "c7g.large"]})
    )
    assert [(s.index, s.instance_type, s.pool) for s in slots] == [
        (0, "c7i.large", "embench_benchmark_host"),
        (1, "c7i.large", "embench_benchmark_host_1"),
        (2, "c7g.large", "embench_benchmark_host_2"),
        (3, "c7g.large", "embench_benchmark_host_3"),
    ]
    assert host_slots.host_pools(host()) == ["embench_benchmark_host"]  # as before slots
    for task_id, slot in (
        ("provision_host", 0),
        ("benchmark.run_benchmark", 0),
        ("provision_host_3", 3),
        ("release_host_12", 12),
        ("benchmark_2.stop_server", 2),
        ("targets_of_slot_1", 0),  # not a host's task
    ):
        assert host_slots.slot_of_task(task_id) == slot, task_id


def test_a_run_takes_as_many_hosts_as_its_provisioner_has(app_config):
    config = host(parallel=3, ssh=SSH_HOSTS, ec2={"instance_types": ["c7i.large", "c7g.large"]})
    assert [s.index for s in host_slots.slots_in_use(config, "local")] == [0]
    assert [(s.index, s.instance_type) for s in host_slots.slots_in_use(config, "ssh")] == [
        (0, None),
        (1, None),
    ]
    assert len(host_slots.slots_in_use(config, "ec2")) == 6


def test_the_plan_deals_targets_over_the_hosts(app_config):
    config = with_host(app_config, parallel=2, ssh=SSH_HOSTS)
    params = {"models": ["all-minilm-l6-v2"], "runtimes": ["onnx"], "provisioner": "ssh"}
    planned = plan_targets(params, config)
    assert [(t["variant"], t["host_slot"]) for t in planned] == [
        ("fp32", 0),
        ("optimized", 1),
        ("int8", 0),
    ]
    # on this machine there is one host, whatever host.parallel says
    local = plan_targets({**params, "provisioner": "local"}, config)
    assert {t["host_slot"] for t in local} == {0}


def test_every_target_runs_on_every_instance_type_of_the_axis(app_config):
    config = with_host(app_config, ec2={"instance_types": ["c7i.large", "c7g.large"]})
    params = {"models": ["all-minilm-l6-v2"], "runtimes": ["onnx"], "variants": ["fp32"]}
    planned = plan_targets({**params, "provisioner": "ec2"}, config)
    assert [(t["variant"], t["instance_type"], t["host_slot"]) for t in planned] == [
        ("fp32", "c7i.large", 0),
        ("fp32", "c7g.large", 1),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parallel": 0}, "parallel: input should be greater than or equal to 1"),
        (
            {"ec2": {"instance_type": "c7i.large", "instance_types": ["c7g.large"]}},
            "name the instance type once",
        ),
        ({"ec2": {"instance_types": ["c7i.large", "c7i.large"]}}, "repeated: c7i.large"),
        ({"ec2": {"instance_types": ["C7i large"]}}, "instance_types.0"),
    ],
)
def test_bad_host_settings_are_named(fields, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        host(**fields)
    text = str(caught.value).lower()
    assert message.split(":")[0].lower() in text or message.lower() in text


def test_the_pools_command_prints_what_airflow_imports(repo_root, tmp_path):
    config_dir = tmp_path / "config"
    shutil.copytree(repo_root / "config", config_dir)
    benchmark = config_dir / "benchmark.yaml"
    shipped = benchmark.read_text()
    assert "host:\n  provisioner: local\n" in shipped
    benchmark.write_text(shipped.replace("host:\n", "host:\n  parallel: 2\n", 1))
    done = subprocess.run(
        [sys.executable, "-m", "embench.cli", "--config-dir", str(config_dir), "host-pools"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "embench_benchmark_host": {
            "slots": 1,
            "description": "one benchmark per host",
            "include_deferred": False,
        },
        "embench_benchmark_host_1": {
            "slots": 1,
            "description": "one benchmark per host",
            "include_deferred": False,
        },
    }


def test_the_report_names_each_target_not_measured_and_why(app_config, tmp_path):
    config = with_host(app_config, parallel=2, ssh=SSH_HOSTS)
    params = {"models": ["all-minilm-l6-v2"], "runtimes": ["onnx", "torch"], "provisioner": "ssh"}
    planned = plan_targets(params, config)
    assert len(planned) == 5  # onnx x3, torch x2: slot 0 gets 3, slot 1 gets 2
    record_failure(tmp_path, "provision_host_1", None, 3, "EmbenchError: no ssh host is free")
    record_failure(tmp_path, "benchmark.run_benchmark", 2, 2, "EmbenchError: server stopped")
    stored = {"0", "1"}  # slot 0's first two groups stored their results
    missing = not_measured(planned, stored, failures(tmp_path))
    assert [(m["target"], m["host_slot"], m["target_id"]) for m in missing] == [
        ("all-minilm-l6-v2/torch/bf16", 0, "2"),
        ("all-minilm-l6-v2/onnx/optimized", 1, "1-0"),
        ("all-minilm-l6-v2/torch/fp32", 1, "1-1"),
    ]
    assert missing[0]["reason"] == "run_benchmark failed (try 2): EmbenchError: server stopped"
    assert missing[1]["reason"] == (
        "its host (slot 1) could not be provisioned: EmbenchError: no ssh host is free"
    )
    # nothing recorded: said so, not guessed
    assert not_measured(planned, {"0", "1", "1-0", "1-1"}, [])[0]["reason"].startswith(
        "did not finish"
    )


def test_a_plan_that_selects_nothing_is_an_error(app_config):
    with pytest.raises(ConfigError, match="select no"):
        plan_targets(
            {"models": ["all-minilm-l6-v2"], "runtimes": ["onnx"], "variants": ["bf16"]}, app_config
        )
