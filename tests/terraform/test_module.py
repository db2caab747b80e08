"""Static checks of terraform/: the contract with the ec2 provisioner, the security posture
the design promises, and checkov. Terraform itself is not needed (nor installable here)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

hcl2 = pytest.importorskip("hcl2")

from embench.config.schema import Ec2HostConfig  # noqa: E402
from embench.hosts.ec2 import MANAGED_TAG_KEY, TERRAFORM_OUTPUTS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = REPO_ROOT / "terraform"
OPEN = {"0.0.0.0/0", "::/0"}


def _load(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=options)


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    """Every top-level block of every .tf file, merged by block type."""
    files = sorted(MODULE.glob("*.tf"))
    assert files, f"no .tf files in {MODULE}"
    merged: dict[str, list[Any]] = {}
    for path in files:
        for block_type, blocks in _load(path).items():
            merged.setdefault(block_type, []).extend(blocks)
    return merged


def _named(module: dict[str, list[Any]], block_type: str) -> dict[str, dict[str, Any]]:
    return {name: body for block in module.get(block_type, []) for name, body in block.items()}


def _resources(module: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in module.get("resource", []):
        for resource_type, instances in block.items():
            if resource_type == kind:
                found.update(instances)
    return found


def _one(module: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    resources = _resources(module, kind)
    assert len(resources) == 1, f"expected one {kind}, found {sorted(resources)}"
    return next(iter(resources.values()))


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block"
    return blocks[0]


def _holds(condition: str, variable: str, value: float) -> bool:
    """Evaluate a number variable's validation condition for `value`: a small subset of HCL
    (comparisons, &&, ||, floor()), enough for the range checks of this module."""
    expression = condition.removeprefix("${").removesuffix("}")
    expression = expression.replace(f"var.{variable}", repr(value))
    expression = expression.replace("&&", " and ").replace("||", " or ")
    assert re.fullmatch(r"[\d.\s()<>=!]*(?:(?:and|or|floor)[\d.\s()<>=!]*)*", expression), (
        f"condition outside the evaluated subset: {condition}"
    )
    return bool(eval(expression, {"__builtins__": {}}, {"floor": math.floor}))


# -- the contract with the provisioner ---------------------------------------------------------


def test_outputs_are_exactly_what_the_provisioner_reads(module: dict[str, list[Any]]) -> None:
    outputs = _named(module, "output")
    assert set(outputs) == set(TERRAFORM_OUTPUTS)
    for name, body in outputs.items():
        assert body.get("description"), f"output {name} has no description"


def test_outputs_carry_the_values_user_data_uses(module: dict[str, list[Any]]) -> None:
    outputs = _named(module, "output")
    assert outputs["ssh_user"]["value"] == "${var.ssh_user}"
    assert outputs["ready_marker"]["value"] == "${var.ready_marker}"
    assert outputs["instance_type"]["value"] == "${var.instance_type}"
    assert "aws_launch_template.host.id" in outputs["launch_template_id"]["value"]
    assert "aws_launch_template.host.latest_version" in outputs["launch_template_version"]["value"]

    template = _one(module, "aws_launch_template")
    user_data = template["user_data"]
    assert "user_data.sh.tftpl" in user_data
    assert "var.ssh_user" in user_data and "var.ready_marker" in user_data
    script = (MODULE / "user_data.sh.tftpl").read_text()
    assert "${ready_marker}" in script and "${ssh_user}" in script
    assert 'usermod -aG docker "$SSH_USER"' in script
    # The marker means "Docker usable": written only after the daemon answered.
    assert script.rindex("docker info") < script.index('> "$READY_MARKER"')


def test_user_data_gets_every_template_variable_it_uses(module: dict[str, list[Any]]) -> None:
    user_data = _one(module, "aws_launch_template")["user_data"]
    arguments = re.search(r"user_data\.sh\.tftpl\", \{(?P<map>[^}]*)\}", user_data)
    assert arguments, f"templatefile() call not understood: {user_data}"
    passed = dict(re.findall(r"(\w+)\s*=\s*(var\.\w+)", arguments["map"]))
    script = (MODULE / "user_data.sh.tftpl").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", script))
    assert used == set(passed), f"template uses {sorted(used)}, templatefile() passes {passed}"
    assert passed["max_lifetime_minutes"] == "var.max_lifetime_minutes"


def test_user_data_schedules_the_self_termination_first() -> None:
    script = (MODULE / "user_data.sh.tftpl").read_text()
    lines = [line.strip() for line in script.splitlines()]
    assert lines[0] == "#!/bin/bash"
    commands = [line for line in lines if line and not line.startswith("#")]
    # Shell setup (strict mode, logging) may precede it; nothing that does anything may.
    while commands and (commands[0] == "set -euo pipefail" or commands[0].startswith("exec >")):
        commands.pop(0)
    assert commands, "user_data has no commands"
    first = commands[0]
    assert re.fullmatch(r'shutdown -h \+\$\{max_lifetime_minutes\}(?: "[^"`\\]*")?', first), (
        f"the first command of user_data must schedule `shutdown -h +${{max_lifetime_minutes}}`, "
        f"found {first!r}"
    )
    # Nothing else cancels or replaces the deadline later on.
    assert sum("shutdown" in c.split("#")[0] for c in commands) == 1, "a second shutdown command"
    # The reason is written down next to it.
    comment = script[: script.index(first)].rsplit("\n\n", 1)[-1]
    assert "first" in comment and "scheduler" in comment and "terminate" in comment, comment


def test_launch_template_terminates_a_host_that_shuts_itself_down(
    module: dict[str, list[Any]],
) -> None:
    template = _one(module, "aws_launch_template")
    # Without "terminate", user_data's deadline would only stop the host (its volume still
    # billed, the instance still counted), not remove it.
    assert template.get("instance_initiated_shutdown_behavior") == "terminate"
    assert template.get("disable_api_termination") is False


def test_instance_tags_mark_hosts_as_managed(module: dict[str, list[Any]]) -> None:
    template = _one(module, "aws_launch_template")
    specs = {s["resource_type"]: s["tags"] for s in template["tag_specifications"]}
    assert set(specs) == {"instance", "volume"}
    for tags in specs.values():
        assert f'"{MANAGED_TAG_KEY}" = "true"' in tags


def test_variables_are_documented_and_validated(module: dict[str, list[Any]]) -> None:
    variables = _named(module, "variable")
    for name, body in variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
    validated = (
        "allowed_ssh_cidr",
        "key_name",
        "instance_type",
        "root_volume_size_gb",
        "server_port",
        "max_lifetime_minutes",
    )
    for name in validated:
        assert variables[name].get("validation"), f"variable {name} is not validated"
        for validation in variables[name]["validation"]:
            assert validation.get("error_message"), f"variable {name}: no error_message"
    assert variables["instance_type"]["default"] == "c7i.4xlarge"
    assert variables["root_volume_size_gb"]["default"] == 100
    assert variables["ready_marker"]["default"] == "/var/lib/embench/ready"
    assert variables["server_port"]["default"] == 8080
    assert variables["max_lifetime_minutes"]["default"] == 240


@pytest.mark.parametrize(
    ("name", "accepted", "refused"),
    [
        ("max_lifetime_minutes", [30, 31, 240, 1439, 1440], [0, 29, 29.5, 90.5, 1441, 10_000]),
        ("server_port", [1024, 8080, 65535], [0, 22, 80, 1023, 8080.5, 65536]),
    ],
)
def test_number_variables_are_whole_and_in_range(
    module: dict[str, list[Any]], name: str, accepted: list[float], refused: list[float]
) -> None:
    variable = _named(module, "variable")[name]
    assert variable["type"] == "number", f"{name} must be a number"
    assert variable.get("description"), f"variable {name} has no description"
    validations = variable.get("validation")
    assert validations, f"variable {name} is not validated"
    for validation in validations:
        assert name in validation["error_message"], f"{name}: the error must name the variable"

    def valid(value: float) -> bool:
        return all(_holds(v["condition"], name, value) for v in validations)

    assert valid(variable["default"]), f"{name}: the default fails its own validation"
    assert [v for v in accepted if not valid(v)] == [], f"{name} refuses valid values"
    assert [v for v in refused if valid(v)] == [], f"{name} accepts invalid values"


def test_server_port_matches_the_pipeline_default(module: dict[str, list[Any]]) -> None:
    benchmark = yaml.safe_load((REPO_ROOT / "config" / "benchmark.yaml").read_text())
    pipeline_default = Ec2HostConfig.model_fields["server_port"].default
    configured = (benchmark["host"].get("ec2") or {}).get("server_port", pipeline_default)
    server_port = _named(module, "variable")["server_port"]
    assert server_port["default"] == pipeline_default == configured, (
        "terraform's server_port, Ec2HostConfig.server_port and benchmark.yaml's "
        "host.ec2.server_port must agree: the security group opens only terraform's port"
    )


def test_allowed_ssh_cidr_is_required_and_refuses_the_internet(
    module: dict[str, list[Any]],
) -> None:
    variable = _named(module, "variable")["allowed_ssh_cidr"]
    assert "default" not in variable, "allowed_ssh_cidr must have no default"
    conditions = " ".join(v["condition"] for v in variable["validation"])
    assert "cidrhost(var.allowed_ssh_cidr" in conditions
    assert '"0.0.0.0/0"' in conditions
    assert "default" not in _named(module, "variable")["key_name"]


def test_tfvars_example_sets_only_known_variables(module: dict[str, list[Any]]) -> None:
    example = _load(MODULE / "terraform.tfvars.example")
    variables = _named(module, "variable")
    assert set(example) <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(example), f"the example misses {required - set(example)}"
    assert example["allowed_ssh_cidr"] not in OPEN


def test_config_points_at_the_exported_outputs() -> None:
    benchmark = yaml.safe_load((REPO_ROOT / "config" / "benchmark.yaml").read_text())
    relative = benchmark["host"]["ec2"]["terraform_outputs"]
    assert (REPO_ROOT / "config" / relative).resolve() == MODULE / "outputs.json"
    assert "outputs.json" in (MODULE / ".gitignore").read_text().splitlines()
    assert "terraform output -json > outputs.json" in (MODULE / "README.md").read_text()


# -- security posture --------------------------------------------------------------------------


def test_versions_are_pinned(module: dict[str, list[Any]]) -> None:
    (terraform,) = module["terraform"]
    assert terraform["required_version"] == ">= 1.5"
    aws = terraform["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5\.\d+(\.\d+)?", aws["version"])


def test_imdsv2_is_required(module: dict[str, list[Any]]) -> None:
    metadata = _block(_one(module, "aws_launch_template"), "metadata_options")
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 1


def test_root_volume_is_encrypted_gp3(module: dict[str, list[Any]]) -> None:
    template = _one(module, "aws_launch_template")
    (mapping,) = template["block_device_mappings"]
    assert mapping["device_name"] == "${var.root_device_name}"
    ebs = _block(mapping, "ebs")
    assert ebs["encrypted"] is True
    assert ebs["volume_type"] == "gp3"
    assert ebs["volume_size"] == "${var.root_volume_size_gb}"
    assert ebs["delete_on_termination"] is True


def test_only_ssh_and_the_server_port_come_in_from_the_allowed_cidr(
    module: dict[str, list[Any]],
) -> None:
    assert not _resources(module, "aws_security_group_rule"), "use the per-rule resources"
    for name, group in _resources(module, "aws_security_group").items():
        assert "ingress" not in group and "egress" not in group, f"inline rules in {name}"
    ingress = _resources(module, "aws_vpc_security_group_ingress_rule")
    assert len(ingress) == 2, f"expected SSH and the server port only, found {sorted(ingress)}"
    ports = sorted(
        ((rule["from_port"], rule["to_port"], rule["ip_protocol"]) for rule in ingress.values()),
        key=str,
    )
    server = "${var.server_port}"
    assert ports == sorted([(22, 22, "tcp"), (server, server, "tcp")], key=str), ports
    for name, rule in ingress.items():
        assert rule["security_group_id"] == "${aws_security_group.host.id}", name
        assert rule["cidr_ipv4"] == "${var.allowed_ssh_cidr}", name
        assert rule.get("description"), f"ingress rule {name} has no description"
        for other_source in ("cidr_ipv6", "prefix_list_id", "referenced_security_group_id"):
            assert other_source not in rule, f"ingress rule {name} has a {other_source}"


def test_no_rule_opens_ingress_to_the_internet(module: dict[str, list[Any]]) -> None:
    text = "\n".join(p.read_text() for p in MODULE.glob("*.tf"))
    for kind in ("aws_vpc_security_group_ingress_rule", "aws_security_group_rule"):
        for name, rule in _resources(module, kind).items():
            if rule.get("type", "ingress") != "ingress":
                continue
            assert rule.get("cidr_ipv4") not in OPEN and rule.get("cidr_ipv6") not in OPEN, name
            assert not OPEN & set(rule.get("cidr_blocks", [])), name
    # The only literal 0.0.0.0/0 lines are egress rules (and the validation refusing it).
    for line in text.splitlines():
        if '"0.0.0.0/0"' in line:
            assert line.strip().startswith(("cidr_ipv4", "condition")), line


def test_egress_is_limited_and_described(module: dict[str, list[Any]]) -> None:
    egress = _resources(module, "aws_vpc_security_group_egress_rule")
    assert egress
    for name, rule in egress.items():
        assert rule.get("description"), f"egress rule {name} has no description"
        assert rule["ip_protocol"] == "tcp", f"egress rule {name} opens every protocol"
        assert rule["from_port"] == rule["to_port"] and rule["from_port"] in (80, 443), name


def test_instance_profile_is_least_privilege(module: dict[str, list[Any]]) -> None:
    for kind in ("aws_iam_policy", "aws_iam_role_policy", "aws_iam_user", "aws_iam_group"):
        assert not _resources(module, kind), f"unexpected {kind}"
    role = _one(module, "aws_iam_role")
    assert "inline_policy" not in role and "managed_policy_arns" not in role
    attachments = _resources(module, "aws_iam_role_policy_attachment")
    for name, attachment in attachments.items():
        assert attachment["policy_arn"].endswith(":iam::aws:policy/AmazonSSMManagedInstanceCore")
        assert attachment["count"] == "${var.enable_ssm_session_manager ? 1 : 0}", name
    documents = _named(module, "data").get("aws_iam_policy_document", {})
    for name, document in documents.items():
        for statement in document["statement"]:
            assert statement["actions"] == ["sts:AssumeRole"], name
            (principal,) = statement["principals"]
            assert principal["identifiers"] == ["ec2.amazonaws.com"], name


# -- checkov -----------------------------------------------------------------------------------


def _checkov() -> str | None:
    candidates = [
        os.environ.get("CHECKOV"),
        str(REPO_ROOT / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def test_checkov_finds_no_failed_check() -> None:
    checkov = _checkov()
    if checkov is None:
        pytest.skip(
            "checkov not installed: it conflicts with the pipeline's pins, so it lives in its own "
            "virtualenv (.venv-checkov, or set CHECKOV=/path/to/checkov)"
        )
    done = subprocess.run(
        [checkov, "-d", str(MODULE), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_API_KEY": "", "PRISMA_API_URL": ""},
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    passed = 0
    for item in reports:
        failed += item["results"]["failed_checks"]
        skipped += item["results"]["skipped_checks"]
        passed += item["summary"]["passed"]
    summary = (
        f"Passed checks: {passed}, Failed checks: {len(failed)}, Skipped checks: {len(skipped)}"
    )
    print(f"checkov {reports[0]['summary'].get('checkov_version')}: {summary}")
    # Without a Prisma API key checkov reports no severity: then every failed check counts.
    blocking = [c for c in failed if (c.get("severity") or "HIGH").upper() in {"HIGH", "CRITICAL"}]
    assert not blocking, summary + "".join(
        f"\n  {c['check_id']} {c['resource']} {c['file_path']}: {c['check_name']}" for c in blocking
    )
    for check in skipped:
        result = check.get("check_result") or {}
        reason = (result.get("suppress_comment") or check.get("suppress_comment") or "").strip()
        assert len(reason) > 20 and reason != "No comment provided", (
            f"{check['check_id']} on {check['resource']} is suppressed without a written reason"
        )
    assert passed > 20, summary
