"""ONNX Runtime's session options from the server's settings, on the real MiniLM fp32 model:
inter-op threads (parallel execution mode above one) and the graph optimization level reach
the session, change nothing in the vectors, and /info reports them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from embench.prepare import prepare_model
from embench.prepare.parity import parity_texts
from server.config import ServerSettings
from server.runtime import create_embedder
from server.runtime.onnx_embedder import OnnxEmbedder
from tests.conftest import DEFAULT_MODEL
from tests.server.conftest import serve_in_process

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm_fp32(app_config, model_cache) -> Path:
    """Only the fp32 variant (the session's cache: no second conversion)."""
    (prepared,) = prepare_model(app_config, DEFAULT_MODEL, ["fp32"], cache_root=model_cache)
    return Path(prepared.directory)


def test_the_defaults_are_the_session_options_the_server_always_had(minilm_fp32):
    options = OnnxEmbedder(minilm_fp32, intra_op_threads=1).session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_inter_op_threads_and_the_optimization_level_reach_the_session(minilm_fp32):
    texts = parity_texts()[:16]
    reference = OnnxEmbedder(minilm_fp32, intra_op_threads=1).embed(texts)
    for level, expected in (
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("disable", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ):
        embedder = create_embedder(
            "onnx",
            minilm_fp32,
            model_info=None,
            threads=1,
            inter_op_threads=2,
            graph_optimization_level=level,
        )
        options = embedder.session.get_session_options()
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert options.inter_op_num_threads == 2
        assert options.graph_optimization_level == expected
        got = embedder.embed(texts)
        assert np.abs(got - reference).max() < 1e-4


@pytest.mark.anyio
async def test_info_reports_the_applied_options(minilm_fp32):
    settings = ServerSettings(
        model_dir=minilm_fp32,
        threads=1,
        inter_op_threads=2,
        graph_optimization_level="extended",
        warmup=False,
    )
    async with serve_in_process(settings) as client:
        response = await client.post("/embed", json={"texts": ["tuned"]})
        assert response.status_code == 200, response.text
        info = (await client.get("/info")).json()
    assert info["inter_op_threads"] == 2
    assert info["graph_optimization_level"] == "extended"
