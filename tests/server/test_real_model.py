"""The app in-process on the real prepared model (ONNX) and on the PyTorch baseline runtime:
served embeddings equal the runtime's own, whatever the batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embench.prepare.parity import parity_texts
from server.config import ServerSettings
from server.model import resolve_model
from server.runtime.onnx_embedder import OnnxEmbedder
from tests.server.conftest import serve_in_process

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


async def test_served_embeddings_equal_the_runtime_under_concurrent_batching(fp32_dir):
    texts = parity_texts()
    expected = OnnxEmbedder(fp32_dir, intra_op_threads=1).embed(texts)
    settings = ServerSettings(model_dir=fp32_dir, threads=2, max_batch_texts=8)
    async with serve_in_process(settings) as client:
        responses = await asyncio.gather(
            *(client.post("/embed", json={"texts": [t]}) for t in texts)
        )
        got = np.array([r.json()["embeddings"][0] for r in responses])
        assert cosines(got, expected).min() >= 0.9999
        assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
        info = (await client.get("/info")).json()
        assert info["variant"] == "fp32" and info["runtime"] == "onnx"
        assert info["parity"]["passed"] is True
        assert info["warmup_ms"] > 0


async def test_torch_runtime_serves_the_source_model_like_onnx(fp32_dir):
    pytest.importorskip("sentence_transformers")
    texts = parity_texts()[:12]
    expected = OnnxEmbedder(fp32_dir, intra_op_threads=1).embed(texts)
    # A prepared directory whose manifest names its source package.
    settings = ServerSettings(model_dir=fp32_dir, runtime="torch", threads=2, warmup=False)
    async with serve_in_process(settings) as client:
        response = await client.post("/v1/embeddings", json={"input": texts, "model": "m"})
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]])
        assert cosines(got, expected).min() >= 0.9999
        info = (await client.get("/info")).json()
        assert info["runtime"] == "torch" and info["runtime_version"].startswith("2.")
        assert info["library_versions"]["sentence-transformers"]


def test_torch_runtime_accepts_a_sentence_transformers_directory(fp32_dir):
    source = resolve_model(ServerSettings(model_dir=fp32_dir, runtime="torch")).load_dir
    assert (source / "modules.json").is_file()
    spec = resolve_model(ServerSettings(model_dir=source, runtime="torch"))
    assert spec.load_dir == source and spec.manifest is None
