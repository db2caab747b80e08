"""The real server image (target onnx) with the real model mounted read-only: health and user,
embeddings equal to the in-process reference, 64 concurrent clients, the bad-input table,
429 under overload and recovery, graceful shutdown. Every container started here is removed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from embench.prepare.parity import parity_texts
from server.runtime.onnx_embedder import OnnxEmbedder
from tests.server.conftest import Container, ContainerFactory, docker
from tests.server.test_api import BAD_INPUTS, LIMIT_TEXTS

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.anyio]

TABLE_ENV = {
    "EMBENCH_MAX_TEXTS_PER_REQUEST": str(LIMIT_TEXTS),
    "EMBENCH_MAX_BODY_BYTES": str(64 * 1024),
}


@pytest.fixture(scope="module")
def server(containers: ContainerFactory, fp32_dir: Path) -> Container:
    return containers.start(fp32_dir, TABLE_ENV)


@pytest.fixture(scope="module")
def reference(fp32_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(fp32_dir, intra_op_threads=1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def mixed_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "model",
        "turns",
        "text",
        "into",
        "vectors",
        "that",
        "capture",
        "meaning",
        "across",
        "many",
        "languages",
    ]
    return [
        f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.choice([1, 3, 8, 20, 60, 300])))
        for i in range(n)
    ]


def test_container_is_healthy_non_root_and_mounts_the_model_read_only(server, fp32_dir):
    assert docker("exec", server.id, "id", "-u").stdout.strip() != "0"
    mounts = server.inspect("{{range .Mounts}}{{.Destination}}={{.RW}} {{end}}")
    assert "/model=false" in mounts
    write = docker("exec", server.id, "touch", "/model/x", check=False)
    assert write.returncode != 0
    deadline = time.monotonic() + 60
    while server.inspect("{{.State.Health.Status}}") != "healthy":
        assert time.monotonic() < deadline, server.logs()
        time.sleep(1)
    info = httpx.get(server.url + "/info").json()
    manifest_sha = hashlib.sha256((fp32_dir / "manifest.json").read_bytes()).hexdigest()
    assert info["manifest_sha256"] == manifest_sha
    assert info["runtime"] == "onnx" and info["variant"] == "fp32"
    assert info["threads"] == 2
    assert info["model_load_ms"] > 0 and info["process_rss_bytes"] > 50_000_000
    # No torch in the ONNX image.
    assert docker("exec", server.id, "python3", "-c", "import torch", check=False).returncode != 0


def test_container_embeddings_equal_the_in_process_reference(server, reference):
    texts = parity_texts()
    expected = reference.embed(texts)
    whole = httpx.post(server.url + "/embed", json={"texts": texts[:LIMIT_TEXTS]}, timeout=60)
    assert whole.status_code == 200, whole.text
    got = np.array(whole.json()["embeddings"])
    assert cosines(got, expected[:LIMIT_TEXTS]).min() >= 0.9999
    for name in ("x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(whole.headers[name]) >= 0
    openai = httpx.post(
        server.url + "/v1/embeddings",
        json={
            "input": texts[LIMIT_TEXTS : 2 * LIMIT_TEXTS],
            "model": "m",
            "encoding_format": "base64",
        },
        timeout=60,
    )
    assert openai.status_code == 200, openai.text
    data = openai.json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    assert cosines(decoded, expected[LIMIT_TEXTS : 2 * LIMIT_TEXTS]).min() >= 0.9999
    singles = [httpx.post(server.url + "/embed", json={"texts": [t]}, timeout=60) for t in texts]
    got = np.array([r.json()["embeddings"][0] for r in singles])
    assert cosines(got, expected).min() >= 0.9999
    # The parity set holds one text beyond max_seq_length: truncated, and said so.
    flags = [r.json()["truncated"][0] for r in singles]
    assert any(flags)


async def test_64_concurrent_clients_are_all_answered_correctly(server, reference):
    texts = mixed_texts(64 * 3, seed=64)
    per_client = [texts[i * 3 : i * 3 + 1 + i % 3] for i in range(64)]
    async with httpx.AsyncClient(
        base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as client:
        responses = await asyncio.gather(
            *(client.post("/embed", json={"texts": chunk}) for chunk in per_client)
        )
    flat_texts = [t for chunk in per_client for t in chunk]
    expected = reference.embed(flat_texts)
    got_rows = []
    for chunk, response in zip(per_client, responses, strict=True):
        assert response.status_code == 200, response.text
        rows = response.json()["embeddings"]
        assert len(rows) == len(chunk)
        got_rows.extend(rows)
    assert cosines(np.array(got_rows), expected).min() >= 0.9999
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(sizes) > 1, "concurrent requests never shared a batch"


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "status", "param"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_table_against_the_container(server, endpoint, body, content_type, status, param):
    response = httpx.post(
        server.url + endpoint, content=body, headers={"content-type": content_type}, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_oversized_bodies_and_abuse_neither_crash_nor_leak(server):
    limit = 64 * 1024
    rss_before = httpx.get(server.url + "/info").json()["process_rss_bytes"]
    for _ in range(20):
        big = httpx.post(
            server.url + "/embed",
            content=b'{"texts": ["' + b"x" * (4 * limit) + b'"]}',
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert big.status_code == 413
        assert big.json()["error"]["param"] == "body"

    def chunks():
        yield b'{"texts": ["'
        for _ in range(64):
            yield b"y" * 4096
        yield b'"]}'

    try:
        chunked = httpx.post(
            server.url + "/embed",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert chunked.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while the client is still sending
    for _ in range(5):
        for _name, endpoint, body, content_type, _status, _param in BAD_INPUTS:
            httpx.post(server.url + endpoint, content=body, headers={"content-type": content_type})
    long_text = "word " * 5000  # far beyond 256 tokens, well within the body limit
    truncated = httpx.post(server.url + "/embed", json={"texts": [long_text]}, timeout=60)
    assert truncated.status_code == 200 and truncated.json()["truncated"] == [True]
    assert truncated.json()["usage"]["prompt_tokens"] == 256
    rss_after = httpx.get(server.url + "/info").json()["process_rss_bytes"]
    assert rss_after - rss_before < 64 * 1024 * 1024, (rss_before, rss_after)
    assert httpx.get(server.url + "/health").status_code == 200
    assert server.inspect("{{.State.Running}} {{.RestartCount}}") == "true 0"


async def test_overload_gets_429_at_once_then_recovers(containers, fp32_dir):
    server = containers.start(
        fp32_dir, {"EMBENCH_MAX_QUEUE": "32", "EMBENCH_MAX_TEXTS_PER_REQUEST": "16"}
    )
    texts = mixed_texts(16, seed=429)
    statuses: list[int] = []
    timings: dict[int, list[float]] = {200: [], 429: []}
    retry_after: list[str] = []

    async def one(client: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        response = await client.post("/embed", json={"texts": texts})
        statuses.append(response.status_code)
        timings.setdefault(response.status_code, []).append(time.perf_counter() - started)
        if response.status_code == 429:
            retry_after.append(response.headers.get("retry-after", ""))

    async with httpx.AsyncClient(
        base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as client:
        await asyncio.gather(*(one(client) for _ in range(64)))
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(429) > 0 and statuses.count(200) > 0, statuses
        assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
        # Refusals are immediate: faster than the answers that carried work.
        assert np.median(timings[429]) < np.median(timings[200])
        # Recovery: once the burst has drained, everything is served again.
        await asyncio.sleep(0.5)
        after = await asyncio.gather(
            *(client.post("/embed", json={"texts": [f"after {i}"]}) for i in range(8))
        )
        assert [r.status_code for r in after] == [200] * 8
    metrics = httpx.get(server.url + "/metrics").text
    assert "embench_server_rejected_total" in metrics
    assert "embench_server_queue_depth 0.0" in metrics


async def test_docker_stop_finishes_in_flight_requests(containers, fp32_dir):
    server = containers.start(fp32_dir)
    texts = mixed_texts(64, seed=7)

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        inflight = [
            asyncio.create_task(client.post("/embed", json={"texts": texts})) for _ in range(6)
        ]
        await asyncio.sleep(0.3)  # requests are in, being computed
        stop = await asyncio.to_thread(docker, "stop", "--time", "60", server.id)
        assert stop.returncode == 0
        responses = await asyncio.gather(*inflight, return_exceptions=True)
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert statuses == [200] * 6, (statuses, server.logs())
    assert server.inspect("{{.State.ExitCode}}") == "0", server.logs()


def test_torch_image_serves_the_source_model_like_onnx(torch_server_image, fp32_dir, reference):
    from server.config import ServerSettings
    from server.model import resolve_model

    source = resolve_model(ServerSettings(model_dir=fp32_dir, runtime="torch")).load_dir
    factory = ContainerFactory(torch_server_image)
    try:
        server = factory.start(source)
        info = httpx.get(server.url + "/info").json()
        assert info["runtime"] == "torch" and info["runtime_version"].startswith("2.13.0")
        texts = parity_texts()[:LIMIT_TEXTS]
        response = httpx.post(server.url + "/embed", json={"texts": texts}, timeout=120)
        assert response.status_code == 200, response.text
        got = np.array(response.json()["embeddings"])
        assert cosines(got, reference.embed(texts)).min() >= 0.9999
        no_ort = docker("exec", server.id, "python3", "-c", "import onnxruntime", check=False)
        assert no_ort.returncode != 0
        assert docker("exec", server.id, "id", "-u").stdout.strip() != "0"
    finally:
        factory.remove_all()


@pytest.mark.parametrize(
    ("runtime", "variant", "absent", "min_cosine"),
    [
        ("openvino", "int8", ("torch", "onnxruntime"), 0.97),
        ("torch", "bf16", ("onnxruntime", "openvino"), 0.99),
    ],
)
def test_each_runtime_image_serves_its_own_prepared_variant(
    request, app_config, model_cache, reference, runtime, variant, absent, min_cosine
):
    """The image of a runtime opens the variant prepared for it as the manifest says
    (OpenVINO's int8 with bf16 elsewhere, PyTorch in bf16) and carries no other runtime."""
    from embench.prepare import prepare_targets

    image = request.getfixturevalue(f"{runtime}_server_image")
    (prepared,) = prepare_targets(
        app_config, "all-minilm-l6-v2", [(runtime, variant)], cache_root=model_cache
    )
    factory = ContainerFactory(image)
    try:
        server = factory.start(prepared.directory, {"EMBENCH_WORKERS": "2", "EMBENCH_THREADS": "1"})
        info = httpx.get(server.url + "/info").json()
        assert (info["runtime"], info["variant"], info["workers"]) == (runtime, variant, 2)
        texts = parity_texts()[:LIMIT_TEXTS]
        response = httpx.post(server.url + "/embed", json={"texts": texts}, timeout=120)
        assert response.status_code == 200, response.text
        got = np.array(response.json()["embeddings"])
        assert cosines(got, reference.embed(texts)).min() >= min_cosine
        for module in absent:
            found = docker("exec", server.id, "python3", "-c", f"import {module}", check=False)
            assert found.returncode != 0, f"{module} is in the {runtime} image"
        assert docker("exec", server.id, "id", "-u").stdout.strip() != "0"
        if runtime == "openvino":  # another runtime's variant: refused clearly, not served
            wrong = factory.start(request.getfixturevalue("fp32_dir"), wait=False)
            assert docker("wait", wrong.id).stdout.strip() == "2"
            logs = docker("logs", wrong.id, check=False)
            assert "holds a variant prepared for the onnx runtime; this server runs openvino" in (
                logs.stdout + logs.stderr
            )
    finally:
        factory.remove_all()
