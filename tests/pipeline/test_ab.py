"""`embench ab`: the embedding_ab DAG once on this machine, both servers in Docker, the load
client alternating slices between them; the verdicts printed, the record and report kept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.server.conftest import docker_ready

pytestmark = pytest.mark.skipif(not docker_ready(), reason="needs a Docker engine")


def record_of(output: str) -> dict:
    match = re.search(r"report: (\S+/ab\.md)", output)
    assert match, output[-3000:]
    return json.loads((Path(match.group(1)).parent / "ab.json").read_text())


def test_int8_against_fp32_in_one_run_interleaved(embench_run, tmp_path):
    done = embench_run(
        "--baseline", "onnx/fp32", "--candidate", "onnx/int8",
        "--slices", "3", "--slice-s", "1.5", "--launcher", "docker",
        db_url=f"sqlite:///{tmp_path}/ab.db", command="ab", timeout=900,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.output[-4000:]  # 1: slower (a noisy host)
    assert "embedding_ab manual__" in done.output
    assert re.search(r"\| qps \| [0-9.]+ \| \[[0-9.]+, [0-9.]+\] \| 3 \| \*\*", done.output)
    record = record_of(done.output)
    assert (record["baseline"], record["candidate"]) == ("onnx/fp32", "onnx/int8")
    # interleaved: the order alternates, each pair measured both
    assert [pair["order"][0] for pair in record["slices"]] == ["baseline", "candidate", "baseline"]
    assert all(
        pair[side]["qps"] > 0 for pair in record["slices"] for side in ("baseline", "candidate")
    )
    # each side's server answered the parity gate through its API before it was measured
    assert record["parity_min_cosine"]["baseline"] > 0.999
    assert record["parity_min_cosine"]["candidate"] > 0.99


def test_bad_ab_input_is_named_before_anything_starts(embench_run, tmp_path):
    done = embench_run(
        "--candidate", "onnx/int9", db_url=f"sqlite:///{tmp_path}/ab.db", command="ab", timeout=120
    )
    assert done.returncode == 2
    assert "candidate: all-minilm-l6-v2 has no onnx/int9 in models.yaml" in done.output
    assert "Traceback" not in done.output
