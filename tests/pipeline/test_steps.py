"""Task bodies without a scheduler: planning, params, run context, launcher choice."""

from __future__ import annotations

import pytest

from embench import steps
from embench.errors import ConfigError, EmbenchError
from embench.hosts import Host


def test_plan_expands_models_runtimes_variants_and_repetitions(app_config):
    params = {
        **steps.default_params(app_config),
        "models": ["all-minilm-l6-v2"],
        "runtimes": ["onnx", "openvino"],
        "variants": ["fp32", "int8"],
        "repetitions": 2,
    }
    targets = steps.plan_targets(params, app_config)
    assert [(t["runtime"], t["variant"], t["repetition"]) for t in targets] == [
        ("onnx", "fp32", 1),
        ("onnx", "fp32", 2),
        ("onnx", "int8", 1),
        ("onnx", "int8", 2),
        ("openvino", "fp32", 1),
        ("openvino", "fp32", 2),
        ("openvino", "int8", 1),
        ("openvino", "int8", 2),
    ]
    assert all(t["model"] == "all-minilm-l6-v2" for t in targets)


def test_plan_defaults_to_each_models_own_runtimes_and_variants(app_config):
    targets = steps.plan_targets({"models": ["all-minilm-l6-v2"]}, app_config)
    assert [(t["runtime"], t["variant"]) for t in targets] == [
        ("onnx", "fp32"),
        ("onnx", "optimized"),
        ("onnx", "int8"),
        ("torch", "fp32"),
        ("torch", "bf16"),
        ("openvino", "fp32"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
        ("infinity", "fp32"),
    ]
    # a variant no selected runtime builds selects nothing
    with pytest.raises(ConfigError, match=r"select no \(model, runtime, variant\)"):
        steps.plan_targets(
            {"models": ["all-minilm-l6-v2"], "runtimes": ["torch"], "variants": ["int8"]},
            app_config,
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"models": ["nope"]}, "unknown model id 'nope'; models.yaml defines: "),
        ({"models": ["all-minilm-l6-v2"], "scenarios": ["x"]}, "unknown scenario 'x'"),
        (
            {"models": ["all-minilm-l6-v2"], "runtimes": ["tensorrt"]},
            "unknown runtime 'tensorrt'; expected one of: onnx, torch, openvino",
        ),
        (
            {"models": ["all-minilm-l6-v2"], "variants": ["fp16"]},
            "unknown variant 'fp16'; expected one of: fp32, optimized, int8, bf16",
        ),
        ({"models": ["all-minilm-l6-v2"], "launcher": "ssh"}, "DAG params: launcher: "),
        ({"models": ["all-minilm-l6-v2"], "colour": 1}, "DAG params: colour: "),
        ({"models": []}, "DAG params: models: "),
    ],
)
def test_bad_params_are_named(app_config, params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        steps.plan_targets(params, app_config)


def test_run_context_keys_results_and_containers():
    ctx = steps.RunContext("embedding_benchmark", "manual__2026-11-28T10:00:00+00:00", map_index=2)
    assert ctx.labels()["map_index"] == "2"
    assert ctx.container_labels()["io.embench.run_id"] == ctx.run_id
    assert ctx.work_dir().name == "map-2"
    assert ":" not in ctx.work_dir().parent.name and "+" not in ctx.work_dir().parent.name
    name = steps.server_name(ctx)
    assert name.startswith("embench-server-") and name.endswith("-2")
    assert all(c.isalnum() or c in "-_." for c in name)


def test_auto_launcher_falls_back_to_process_without_a_daemon_on_this_machine_only(tmp_path):
    here = Host("local", "here", f"unix://{tmp_path}/no-docker.sock", "127.0.0.1")
    assert steps.resolve_launcher("auto", here) == "process"
    assert steps.resolve_launcher("docker", here) == "docker"
    remote = Host("ssh", "bench-1", "ssh://root@10.0.0.9:22", "10.0.0.9", ssh={"address": "x"})
    assert steps.resolve_launcher("auto", remote) == "docker"  # never the worker, silently
    with pytest.raises(ConfigError, match="the process launcher runs on this worker only"):
        steps.resolve_launcher("process", remote)


def test_the_ssh_key_can_come_from_an_airflow_connection(monkeypatch):
    import json
    import stat
    from pathlib import Path

    from embench.hosts.ssh import key_file_from_connection

    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----"
    conn = {"conn_type": "ssh", "host": "10.0.0.9", "extra": {"private_key": key}}
    monkeypatch.setenv("AIRFLOW_CONN_EMBENCH_TEST_SSH", json.dumps(conn))
    path = Path(key_file_from_connection("embench_test_ssh"))
    assert path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("AIRFLOW_CONN_EMBENCH_NO_KEY", json.dumps({"conn_type": "ssh"}))
    with pytest.raises(EmbenchError, match="has neither a `private_key` nor a `key_file` extra"):
        key_file_from_connection("embench_no_key")
