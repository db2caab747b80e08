"""Is the server's POST fast path (server.app.EmbenchApp) worth keeping? One run, ratio printed.

The same app, with a runtime that costs nothing (so that only the HTTP layer is measured), is
called straight through ASGI (no sockets) with one-text /embed requests, alternately through
the fast path and through FastAPI's full stack (middleware, routing, exception handlers), in
interleaved slices; each slice gives a ratio and the median over slices is printed, with the
microseconds per request each way. A request of the real server costs about 1-3 ms of CPU, so
the saving is worth it where it is a few percent of that.

    .venv/bin/python bench/asgi_fast_path.py [--slices 9] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.app import create_app
from server.config import ServerSettings
from server.model import LoadedModel, ModelSpec
from server.runtime.base import TokenizedText

BODY = b'{"texts": ["a short sentence to embed"]}'


class FreeEmbedder:
    runtime = "free"
    runtime_version = "0"
    embedding_dim = 8
    max_seq_length = 128

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        return [TokenizedText(ids=[101, 7, 102], truncated=False) for _ in texts]

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        return np.ones((len(batch), self.embedding_dim), dtype=np.float32)


def load(settings: ServerSettings) -> LoadedModel:
    spec = ModelSpec(
        runtime="free",
        load_dir=settings.model_dir,
        model_id="free",
        variant="free",
        manifest=None,
        manifest_sha256=None,
        model_info=None,
    )
    return LoadedModel(spec=spec, embedder=FreeEmbedder(), load_s=0.0)  # type: ignore[arg-type]


async def one_request(app: object) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/embed",
        "raw_path": b"/embed",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8080),
    }
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[operator]
    return status


async def slice_us(app: object, requests: int, concurrency: int = 16) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            assert await one_request(app) == 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (time.perf_counter() - started) / (requests // concurrency * concurrency) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=9)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    settings = ServerSettings(model_dir=Path("."), threads=1, warmup=False, max_batch_wait_ms=0)
    app = create_app(settings, loader=load)
    async with app.router.lifespan_context(app):
        while app.state.server.status != "ready":
            await asyncio.sleep(0.01)
        await slice_us(app, 500)  # warm-up
        fast_us, full_us, ratios = [], [], []
        for i in range(args.slices):
            # Alternate which goes first, so a trend on the machine cancels out.
            order = (True, False) if i % 2 == 0 else (False, True)
            timings = {}
            for fast in order:
                app.fast_path = fast
                timings[fast] = await slice_us(app, args.requests)
            fast_us.append(timings[True])
            full_us.append(timings[False])
            ratios.append(timings[False] / timings[True])
            print(
                f"slice {i + 1}: fast path {timings[True]:.1f} us/request, "
                f"full stack {timings[False]:.1f} us/request, ratio {ratios[-1]:.3f}"
            )
    saved = statistics.median(full - fast for full, fast in zip(full_us, fast_us, strict=True))
    print(
        f"median: fast path {statistics.median(fast_us):.1f} us, full stack "
        f"{statistics.median(full_us):.1f} us per request (HTTP layer + batcher hand-off); "
        f"full/fast = {statistics.median(ratios):.3f}; the fast path saves {saved:.1f} us "
        "per request (median of the slices' differences)"
    )


if __name__ == "__main__":
    asyncio.run(main())
