"""What no client can do to the server: stall the tokenizer with one huge text, fill it with
bytes, hold a connection without finishing its headers or its body, leave work running after it
has gone, or hide a dead inference worker. Over real sockets: uvicorn with the server's own
protocol (server.http_protocol), in this process, over the fake runtime."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn

from server.app import create_app
from server.batcher import CHARS_PER_TOKEN, Batcher, QueueFull, TextTooLong, cut_text
from server.config import ServerSettings
from server.http_protocol import protocol_class
from tests.server.conftest import FAKE_MAX_SEQ, FakeEmbedder, fake_loader, fake_settings

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve_on_socket(settings: ServerSettings, fake: FakeEmbedder) -> AsyncIterator[str]:
    """The app behind uvicorn with the server's protocol, as `python -m server` runs it."""
    port = free_port()
    app = create_app(settings, loader=fake_loader(fake))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol_class(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        lifespan="on",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(500):
            try:
                if (await client.get("/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def request_bytes(path: str, body: bytes, *, declared: int | None = None) -> bytes:
    length = len(body) if declared is None else declared
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode() + body


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout_s)


# ---- before tokenization -------------------------------------------------------------------
def test_a_text_is_cut_at_a_word_boundary_near_the_limit():
    assert cut_text("short", 10) == "short"
    assert cut_text("aaaa bbbb cccc dddd", 12) == "aaaa bbbb cc"  # no boundary in the last tenth
    text = "word " * 1000
    cut = cut_text(text, 100)
    assert len(cut) <= 100 and len(cut) >= 90 and not cut.endswith(" ")
    assert cut_text("x" * 1000, 100) == "x" * 100  # no boundary: exact


async def test_a_huge_text_is_cut_before_the_tokenizer_sees_it(fake: FakeEmbedder):
    batcher = Batcher(
        fake.embed_tokenized,
        fake.tokenize,
        max_batch_tokens=4096,
        max_batch_texts=64,
        max_queue=64,
        max_seq_length=FAKE_MAX_SEQ,
    )
    batcher.start()
    huge = "ordinary words of a long document " * 100_000  # 3.4 MB
    started = time.perf_counter()
    result = await batcher.submit([huge, "short one"])
    took = time.perf_counter() - started
    limit = FAKE_MAX_SEQ * CHARS_PER_TOKEN
    assert max(len(text) for call in fake.tokenize_calls for text in call) <= limit
    assert result.truncated == [True, False]
    # The same embedding as the whole text's: the model keeps only the first tokens anyway.
    whole = fake.embed_tokenized(fake.tokenize([huge[: limit * 4]]))
    assert (result.vectors[0] == whole[0]).all()
    assert took < 1.0
    with pytest.raises(TextTooLong, match=f"more than the {limit:,}"):
        batcher.admit(["fine", huge], truncate=False)
    await batcher.stop()


async def test_admission_counts_bytes_as_well_as_texts(fake: FakeEmbedder):
    batcher = Batcher(
        fake.embed_tokenized,
        fake.tokenize,
        max_batch_tokens=4096,
        max_batch_texts=64,
        max_queue=64,
        max_queue_bytes=4096,
        max_seq_length=1024,
    )
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(["é" * 1500]))  # 3,000 bytes, 1,500 chars
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull, match="bytes waiting") as refused:
        batcher.admit(["y" * 1500])
    assert refused.value.what == "bytes" and refused.value.limit == 4096
    fake.gate.set()
    await holder
    assert (await batcher.submit(["y" * 1500])).vectors.shape[0] == 1  # the bytes came back
    await batcher.stop()


# ---- connections ---------------------------------------------------------------------------
async def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path, fake):
    settings = fake_settings(tmp_path, header_timeout_s=0.5)
    async with serve_on_socket(settings, fake) as url:
        port = int(url.rsplit(":", 1)[1])
        silent = await asyncio.open_connection("127.0.0.1", port)
        loris_reader, loris = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        for byte in b"POST /embed HTTP/1.1\r\nHost: x\r\n":  # a byte now and then, never done
            loris.write(bytes([byte]))
            await loris.drain()
            await asyncio.sleep(0.02)
            if loris_reader.at_eof():
                break
        assert await read_until_closed(loris_reader, 3) == b""
        assert await read_until_closed(silent[0], 3) == b""
        assert time.perf_counter() - started < 3
        async with httpx.AsyncClient(base_url=url) as client:  # others are served as before
            assert (await client.post("/embed", json={"texts": ["fine"]})).status_code == 200
        for _, writer in (silent, (loris_reader, loris)):
            writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path, fake):
    settings = fake_settings(tmp_path, body_timeout_s=0.5)
    async with serve_on_socket(settings, fake) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("/embed", b'{"texts": ["tri', declared=100))
        await writer.drain()
        answer = await read_until_closed(reader, 5)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert orjson.loads(body)["error"]["code"] == "body_timeout"
        writer.close()


# A last chunk over uvicorn's high-water mark (64 KiB) pauses reading (see http_protocol).
@pytest.mark.parametrize("text_bytes", [100, 20_000], ids=["small body", "large body"])
async def test_work_for_a_client_that_went_away_is_dropped(tmp_path: Path, fake, text_bytes):
    settings = fake_settings(tmp_path, max_batch_wait_ms=0, max_body_bytes=1024 * 1024)
    async with serve_on_socket(settings, fake) as url:
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            fake.gate.clear()
            holder = asyncio.create_task(client.post("/embed", json={"texts": ["hold"]}))
            while not fake.entered.is_set():
                await asyncio.sleep(0.01)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            padding = " word" * (text_bytes // 5)
            body = orjson.dumps({"texts": [f"gone {i}{padding}" for i in range(8)]})
            # In two parts, as a large body arrives: the app reads the first and waits for more.
            message = request_bytes("/embed", body)
            writer.write(message[:2000])
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(message[2000:])
            await writer.drain()
            for _ in range(200):  # until the request is queued behind the held batch
                metrics = (await client.get("/metrics")).text
                if "embench_server_queue_depth 8.0" in metrics:
                    break
                await asyncio.sleep(0.01)
            writer.close()
            await asyncio.sleep(0.2)
            fake.gate.set()
            assert (await holder).status_code == 200
            after = await client.post("/embed", json={"texts": ["after"]})
            assert after.status_code == 200
            computed = [text for batch in fake.batches for text in batch]
            assert not any(text.startswith("gone") for text in computed), computed
            metrics = (await client.get("/metrics")).text
            assert "embench_server_disconnected_requests_total 1.0" in metrics


# ---- a dead worker -------------------------------------------------------------------------
class WorkerKiller(BaseException):
    """Not an Exception: nothing in a batch catches it, so it ends the worker thread."""


async def test_health_reports_a_dead_inference_worker(tmp_path: Path):
    fake = FakeEmbedder()
    original = fake.embed_tokenized

    def embed(batch):
        if any("KILL" in fake.detokenize(item) for item in batch):
            raise WorkerKiller("the runtime took the thread down")
        return original(batch)

    fake.embed_tokenized = embed  # type: ignore[method-assign]
    settings = fake_settings(tmp_path)
    async with (
        serve_on_socket(settings, fake) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        assert (await client.post("/embed", json={"texts": ["fine"]})).status_code == 200
        killed = await client.post("/embed", json={"texts": ["KILL it"]})
        assert killed.status_code == 503
        assert killed.json()["error"]["code"] == "worker_failed"
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed"
        assert "inference worker" in health.json()["error"]
        assert "WorkerKiller" in health.json()["error"]
        later = await client.post("/embed", json={"texts": ["fine again"]})
        assert later.status_code == 503 and later.json()["error"]["code"] == "worker_failed"


async def test_the_servers_byte_bound_is_its_setting(tmp_path: Path, fake: FakeEmbedder):
    settings = fake_settings(tmp_path, max_queue_bytes=2048)
    async with serve_on_socket(settings, fake) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            fake.gate.clear()
            held = asyncio.create_task(client.post("/embed", json={"texts": ["a " * 600]}))
            while not fake.entered.is_set():
                await asyncio.sleep(0.01)
            refused = await client.post("/embed", json={"texts": ["b " * 600]})
            fake.gate.set()
            assert (await held).status_code == 200
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert "bytes" in refused.json()["error"]["message"]


async def test_a_dead_tokenizer_thread_is_reported_too(tmp_path: Path):
    fake = FakeEmbedder()
    original = fake.tokenize

    def tokenize(texts):
        if any("KILL" in text for text in texts):
            raise WorkerKiller("the tokenizer took the thread down")
        return original(texts)

    fake.tokenize = tokenize  # type: ignore[method-assign]
    async with (
        serve_on_socket(fake_settings(tmp_path), fake) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        killed = await client.post("/embed", json={"texts": ["KILL it"]})
        assert killed.status_code == 503 and killed.json()["error"]["code"] == "worker_failed"
        health = (await client.get("/health")).json()
        assert health["status"] == "failed" and "tokenizer-0 died: WorkerKiller" in health["error"]
