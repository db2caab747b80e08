"""The HTTP API in-process (httpx ASGI transport) on the fake runtime: endpoints, the OpenAI
format, timing headers, the bad-input table, backpressure, errors, metrics, shutdown."""

from __future__ import annotations

import asyncio
import base64
import threading

import httpx
import numpy as np
import pytest

from server.app import create_app
from tests.server.conftest import (
    FAKE_DIM,
    FakeEmbedder,
    fake_loader,
    fake_settings,
    fake_vector,
    serve_in_process,
)

pytestmark = pytest.mark.anyio

TIMING_HEADERS = ("x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time")

LIMIT_TEXTS = 16  # fake_settings' max_texts_per_request
JSON = "application/json"
TOO_MANY = b'{"texts": [' + b",".join([b'"t"'] * (LIMIT_TEXTS + 1)) + b"]}"
# (name, endpoint, body, content type, status, the param the error names)
BAD_INPUTS = [
    ("empty list", "/embed", b'{"texts": []}', JSON, 422, "texts"),
    ("empty string", "/embed", b'{"texts": [""]}', JSON, 422, "texts[0]"),
    ("empty string alone", "/embed", b'{"texts": ""}', JSON, 422, "texts"),
    ("non-string item", "/embed", b'{"texts": ["a", 3]}', JSON, 422, "texts[1]"),
    ("null item", "/embed", b'{"texts": ["a", null]}', JSON, 422, "texts[1]"),
    ("nested list", "/embed", b'{"texts": [["a"]]}', JSON, 422, "texts[0]"),
    ("texts not a list", "/embed", b'{"texts": {"a": 1}}', JSON, 422, "texts"),
    ("missing texts", "/embed", b'{"text": ["a"]}', JSON, 422, "text"),
    ("truncate not bool", "/embed", b'{"texts": ["a"], "truncate": "no"}', JSON, 422, "truncate"),
    ("too many texts", "/embed", TOO_MANY, JSON, 422, "texts"),
    ("body not an object", "/embed", b'["a"]', JSON, 422, "body"),
    ("invalid json", "/embed", b'{"texts": ["a"', JSON, 400, "body"),
    ("invalid utf-8", "/embed", b'{"texts": ["\xff\xfe"]}', JSON, 400, "body"),
    ("empty body", "/embed", b"", JSON, 400, "body"),
    ("wrong content type", "/embed", b'{"texts": ["a"]}', "text/plain", 415, "content-type"),
    ("form", "/embed", b"texts=a", "application/x-www-form-urlencoded", 415, "content-type"),
    ("openai empty list", "/v1/embeddings", b'{"input": [], "model": "m"}', JSON, 422, "input"),
    ("openai empty string", "/v1/embeddings", b'{"input": ""}', JSON, 422, "input"),
    ("openai token ids", "/v1/embeddings", b'{"input": [[1, 2]]}', JSON, 422, "input[0]"),
    ("openai missing input", "/v1/embeddings", b'{"model": "m"}', JSON, 422, "input"),
    (
        "openai bad encoding",
        "/v1/embeddings",
        b'{"input": "a", "encoding_format": "int8"}',
        JSON,
        422,
        "encoding_format",
    ),
    (
        "openai bad dimensions",
        "/v1/embeddings",
        b'{"input": "a", "dimensions": 3}',
        JSON,
        422,
        "dimensions",
    ),
    ("openai model not str", "/v1/embeddings", b'{"input": "a", "model": 5}', JSON, 422, "model"),
    ("openai invalid json", "/v1/embeddings", b"{nope", JSON, 400, "body"),
]


async def test_health_is_503_until_the_model_is_loaded(tmp_path):
    release = threading.Event()
    fake = FakeEmbedder()
    app = create_app(fake_settings(tmp_path), loader=fake_loader(fake, ready=release))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client,
    ):
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "loading"
        assert response.headers["retry-after"] == "1"
        busy = await client.post("/embed", json={"texts": ["a"]})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "not_ready"
        release.set()
        for _ in range(500):
            if (await client.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.post("/embed", json={"texts": ["a"]})).status_code == 200


async def test_a_model_that_fails_to_load_keeps_health_failed(tmp_path):
    def broken(settings):
        raise FileNotFoundError("model.onnx is missing")

    app = create_app(fake_settings(tmp_path), loader=broken)
    fatal = threading.Event()
    app.state.server.on_fatal = fatal.set
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client,
    ):
        for _ in range(200):
            if fatal.is_set():
                break
            await asyncio.sleep(0.01)
        assert fatal.is_set()
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert "model.onnx is missing" in response.json()["error"]


async def test_embed_returns_one_row_per_text_with_usage_and_timings(client):
    texts = ["hello world", "a b c d e", "hello world"]
    response = await client.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    got = np.array(body["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, np.stack([fake_vector(t) for t in texts]), rtol=1e-6)
    assert body["dim"] == FAKE_DIM and body["model"] == "fake-model"
    assert body["truncated"] == [False, False, False]
    assert body["usage"]["prompt_tokens"] == 4 + 7 + 4  # words + [CLS] + [SEP]
    for name in TIMING_HEADERS:
        assert float(response.headers[name]) >= 0, name
    assert float(response.headers["x-total-time"]) >= float(response.headers["x-inference-time"])
    assert response.headers["x-compute-tokens"] == "15"
    assert response.headers["content-type"] == "application/json"


async def test_embed_accepts_a_single_string(client):
    response = await client.post("/embed", json={"texts": "just one"})
    assert response.status_code == 200
    assert len(response.json()["embeddings"]) == 1


async def test_openai_float_and_base64_agree(client):
    texts = ["first text", "second, longer text here"]
    plain = await client.post("/v1/embeddings", json={"input": texts, "model": "anything"})
    packed = await client.post(
        "/v1/embeddings", json={"input": texts, "model": "x", "encoding_format": "base64"}
    )
    assert plain.status_code == packed.status_code == 200
    a, b = plain.json(), packed.json()
    assert a["object"] == "list" and a["model"] == "fake-model"
    assert [d["index"] for d in a["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in a["data"])
    assert a["usage"] == {"prompt_tokens": 4 + 6, "total_tokens": 4 + 6}
    for i, text in enumerate(texts):
        floats = np.array(a["data"][i]["embedding"], dtype=np.float32)
        # Decoded as OpenAI's client does: little-endian float32.
        decoded = np.frombuffer(base64.b64decode(b["data"][i]["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, fake_vector(text))
        np.testing.assert_allclose(floats, decoded, rtol=1e-6)
    for name in TIMING_HEADERS:
        assert name in plain.headers


async def test_openai_string_input_and_matching_dimensions(client):
    response = await client.post(
        "/v1/embeddings", json={"input": "one", "model": "m", "dimensions": FAKE_DIM, "user": "u"}
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "status", "param"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_a_4xx_naming_the_field(
    client, endpoint, body, content_type, status, param
):
    response = await client.post(endpoint, content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    # The server is fine afterwards.
    assert (await client.post("/embed", json={"texts": ["still ok"]})).status_code == 200


async def test_a_text_beyond_max_length_is_truncated_and_flagged(client):
    long_text = " ".join(f"w{i}" for i in range(500))
    response = await client.post("/embed", json={"texts": ["short", long_text]})
    assert response.status_code == 200
    assert response.json()["truncated"] == [False, True]
    assert response.headers["x-truncated-inputs"] == "1"
    openai = await client.post("/v1/embeddings", json={"input": [long_text], "model": "m"})
    assert openai.json()["data"][0]["truncated"] is True
    strict = await client.post("/embed", json={"texts": ["short", long_text], "truncate": False})
    assert strict.status_code == 422
    assert strict.json()["error"]["param"] == "texts[1]"


async def test_an_oversized_body_is_refused_from_its_content_length(client):
    limit = 64 * 1024
    big = b'{"texts": ["' + b"x" * (limit + 10) + b'"]}'
    response = await client.post(
        "/embed", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body"


async def test_an_oversized_chunked_body_is_refused_while_streaming(client):
    sent = 0

    async def chunks():
        nonlocal sent
        yield b'{"texts": ["'
        for _ in range(1000):  # 1000 x 1 KiB, far past the 64 KiB limit
            sent += 1
            yield b"y" * 1024
        yield b'"]}'

    response = await client.post(
        "/embed", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert sent < 1000  # it stopped reading once past the limit


async def test_queue_full_answers_429_with_retry_after_then_recovers(tmp_path):
    fake = FakeEmbedder()
    settings = fake_settings(tmp_path, max_queue=4, max_texts_per_request=4)
    async with serve_in_process(settings, fake_loader(fake)) as client:
        fake.gate.clear()
        hold = asyncio.create_task(client.post("/embed", json={"texts": ["hold"]}))
        for _ in range(500):
            if fake.entered.is_set():
                break
            await asyncio.sleep(0.01)
        queued = [
            asyncio.create_task(client.post("/embed", json={"texts": [f"q{i}", "z"]}))
            for i in range(2)
        ]
        batcher = client.app.state.server.batcher
        for _ in range(500):
            if batcher.queued_texts == 4:
                break
            await asyncio.sleep(0.01)
        refused = await client.post("/embed", json={"texts": ["no room"]})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        refused_openai = await client.post("/v1/embeddings", json={"input": "no room"})
        assert refused_openai.status_code == 429
        fake.gate.set()
        responses = await asyncio.gather(hold, *queued)
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert (await client.post("/embed", json={"texts": ["back"]})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "embench_server_rejected_total 2.0" in metrics


async def test_an_inference_error_fails_only_its_request(client, fake):
    results = await asyncio.gather(
        *(client.post("/embed", json={"texts": [f"fine {i}"]}) for i in range(5)),
        client.post("/embed", json={"texts": ["FAIL here"]}),
    )
    failing = results[-1]
    assert failing.status_code == 500
    assert failing.json()["error"]["code"] == "inference_error"
    # Every other request succeeded, those that shared the failing batch included.
    assert [r.status_code for r in results[:-1]] == [200] * 5
    assert len(next(b for b in fake.batches if "FAIL here" in b)) > 1, "no batch was shared"
    assert (await client.post("/embed", json={"texts": ["afterwards"]})).status_code == 200


async def test_a_tokenizer_error_fails_only_its_request(client, fake):
    results = await asyncio.gather(
        *(client.post("/embed", json={"texts": [f"fine {i}"]}) for i in range(5)),
        client.post("/v1/embeddings", json={"input": ["ok", "BADTOKEN here"]}),
    )
    failing = results[-1]
    assert failing.status_code == 500
    assert failing.json()["error"]["code"] == "tokenization_error"
    assert "BADTOKEN" in failing.json()["error"]["message"]
    assert [r.status_code for r in results[:-1]] == [200] * 5
    assert (await client.post("/embed", json={"texts": ["afterwards"]})).status_code == 200


async def test_concurrent_requests_each_get_their_own_embeddings(client, fake):
    fake.delay_s = 0.002
    texts = [[f"client {c} text {i}" for i in range(1 + c % 3)] for c in range(64)]
    responses = await asyncio.gather(*(client.post("/embed", json={"texts": t}) for t in texts))
    for t, response in zip(texts, responses, strict=True):
        assert response.status_code == 200
        got = np.array(response.json()["embeddings"], dtype=np.float32)
        np.testing.assert_allclose(got, np.stack([fake_vector(x) for x in t]), rtol=1e-6)
    assert max(len(b) for b in fake.batches) > 1  # concurrent texts shared batches


async def test_info_reports_runtime_batching_and_memory(client):
    info = (await client.get("/info")).json()
    assert info["status"] == "ready"
    assert info["runtime_version"] == "0.0"
    assert info["variant"] == "fake"
    assert info["threads"] == 1
    assert info["batching"]["max_queue"] == 512
    assert info["batching"]["max_batch_tokens"] == 4096
    # runtime-specific options at their defaults: null inter-op (the runtime's own)
    assert info["inter_op_threads"] is None and info["graph_optimization_level"] == "all"
    assert info["process_rss_bytes"] > 10_000_000
    assert info["model_load_ms"] >= 0


async def test_metrics_count_requests_errors_and_batches(client):
    await client.post("/embed", json={"texts": ["a", "b"]})
    await client.post("/embed", json={"texts": []})
    text = (await client.get("/metrics")).text
    assert 'embench_server_requests_total{endpoint="/embed",status="200"} 1.0' in text
    assert 'embench_server_requests_total{endpoint="/embed",status="422"} 1.0' in text
    assert "embench_server_errors_total" in text
    assert "embench_server_batch_size_count 1.0" in text
    assert "embench_server_batch_tokens_bucket" in text
    assert "embench_server_inference_seconds_count 1.0" in text
    assert "embench_server_queue_depth 0.0" in text
    assert "embench_server_texts_total 2.0" in text


async def test_unknown_routes_and_methods_get_json_errors(client):
    missing = await client.get("/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = await client.get("/embed")
    assert wrong.status_code == 405 and "error" in wrong.json()


async def test_shutdown_finishes_in_flight_requests(tmp_path):
    fake = FakeEmbedder()
    app = create_app(fake_settings(tmp_path), loader=fake_loader(fake))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s")
    try:
        for _ in range(500):
            if (await client.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        fake.gate.clear()
        inflight = [
            asyncio.create_task(client.post("/embed", json={"texts": [f"in flight {i}"]}))
            for i in range(5)
        ]
        for _ in range(500):
            if fake.entered.is_set() and app.state.server.batcher.queued_texts == 4:
                break
            await asyncio.sleep(0.01)
        shutting = asyncio.create_task(lifespan.__aexit__(None, None, None))
        await asyncio.sleep(0.05)
        assert (await client.get("/health")).status_code == 503
        fake.gate.set()
        await shutting
        responses = await asyncio.gather(*inflight)
        assert [r.status_code for r in responses] == [200] * 5
    finally:
        fake.gate.set()
        await client.aclose()
