"""Settings from EMBENCH_* variables, model-directory checks and `python -m server` start-up
errors: each names the variable or file and the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, ServerSettings
from server.model import ModelDirError, resolve_model

REPO = Path(__file__).resolve().parents[2]


def test_settings_come_from_the_environment_with_types():
    settings = ServerSettings.from_env(
        {
            "EMBENCH_MODEL_DIR": "/models/x",
            "EMBENCH_RUNTIME": "torch",
            "EMBENCH_THREADS": "3",
            "EMBENCH_SPINNING": "true",
            "EMBENCH_MAX_BATCH_TOKENS": "2048",
            "EMBENCH_MAX_TEXTS_PER_REQUEST": "8",
            "EMBENCH_MAX_QUEUE": "100",
            "EMBENCH_PORT": "9000",
            "EMBENCH_LOG_LEVEL": "DEBUG",
            "OTHER": "ignored",
        }
    )
    assert settings.model_dir == Path("/models/x")
    assert settings.runtime == "torch" and settings.threads == 3 and settings.spinning is True
    assert settings.max_batch_tokens == 2048 and settings.max_texts_per_request == 8
    assert settings.max_queue == 100 and settings.port == 9000 and settings.log_level == "debug"


def test_defaults_use_the_cpus_this_process_may_run_on():
    settings = ServerSettings.from_env({"EMBENCH_MODEL_DIR": "/m"})
    assert settings.threads == len(os.sched_getaffinity(0))
    assert settings.runtime == "onnx" and settings.spinning is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "EMBENCH_MODEL_DIR is required but not set"),
        ({"EMBENCH_THREADS": "abc"}, "EMBENCH_THREADS='abc'"),
        ({"EMBENCH_THREADS": "0"}, "EMBENCH_THREADS='0'"),
        ({"EMBENCH_RUNTIME": "tensorflow"}, "EMBENCH_RUNTIME='tensorflow'"),
        ({"EMBENCH_SPINNING": "perhaps"}, "EMBENCH_SPINNING='perhaps'"),
        ({"EMBENCH_PORT": "70000"}, "EMBENCH_PORT='70000'"),
        ({"EMBENCH_MAX_QUEUE": "4"}, "must not exceed EMBENCH_MAX_QUEUE"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    base = {} if env == {} else {"EMBENCH_MODEL_DIR": "/m"}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ServerSettings.from_env({**base, **env})


def test_the_onnx_runtime_refuses_a_directory_without_a_manifest(tmp_path):
    with pytest.raises(ModelDirError, match=r"no manifest\.json"):
        resolve_model(ServerSettings(model_dir=tmp_path))
    with pytest.raises(ModelDirError, match="is not a directory"):
        resolve_model(ServerSettings(model_dir=tmp_path / "missing"))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not a valid manifest"):
        resolve_model(ServerSettings(model_dir=tmp_path))


def test_the_torch_runtime_refuses_a_directory_that_is_neither_kind(tmp_path):
    with pytest.raises(ModelDirError, match="neither a sentence-transformers directory"):
        resolve_model(ServerSettings(model_dir=tmp_path, runtime="torch"))


def _server(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_server_fails_fast_with_a_clear_message(tmp_path):
    result = _server({"EMBENCH_MODEL_DIR": str(tmp_path), "EMBENCH_THREADS": "many"})
    assert result.returncode == 2
    assert "EMBENCH_THREADS='many'" in result.stderr
    result = _server({"EMBENCH_MODEL_DIR": str(tmp_path), "EMBENCH_THREADS": "1"})
    assert result.returncode == 2
    assert "no manifest.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_inter_op_threads_and_graph_optimization_level_default_to_todays_behaviour():
    settings = ServerSettings.from_env({"EMBENCH_MODEL_DIR": "/m"})
    assert settings.inter_op_threads is None  # ONNX Runtime: 1, sequential; PyTorch: its own
    assert settings.graph_optimization_level == "all"
    assert settings.ignored() == []
    tuned = ServerSettings.from_env(
        {
            "EMBENCH_MODEL_DIR": "/m",
            "EMBENCH_INTER_OP_THREADS": "2",
            "EMBENCH_GRAPH_OPTIMIZATION_LEVEL": "basic",
        }
    )
    assert tuned.applied("inter_op_threads") == 2
    assert tuned.applied("graph_optimization_level") == "basic"
    for env, message in (
        ({"EMBENCH_INTER_OP_THREADS": "0"}, "EMBENCH_INTER_OP_THREADS='0'"),
        ({"EMBENCH_GRAPH_OPTIMIZATION_LEVEL": "max"}, "EMBENCH_GRAPH_OPTIMIZATION_LEVEL='max'"),
    ):
        with pytest.raises(ConfigError, match=message):
            ServerSettings.from_env({"EMBENCH_MODEL_DIR": "/m", **env})


def test_runtime_specific_settings_are_ignored_by_the_other_runtimes():
    settings = {"model_dir": "/m", "inter_op_threads": 2, "graph_optimization_level": "basic"}
    torch = ServerSettings(**settings, runtime="torch")
    assert torch.applied("inter_op_threads") == 2
    assert torch.applied("graph_optimization_level") is None
    assert torch.ignored() == ["graph_optimization_level"]
    openvino = ServerSettings(**settings, runtime="openvino")
    assert openvino.applied("inter_op_threads") is None
    assert openvino.ignored() == ["inter_op_threads", "graph_optimization_level"]
