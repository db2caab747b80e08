"""A small real HTTP server with controlled, injected behaviour, for the client's tests.

    python tests/client/fake_server.py [--port 0]     # prints "PORT <n>" once listening

Every route lives under a behaviour prefix, /b/<spec>/, so tests share one server process
without sharing state: <spec> is comma-separated key=value pairs, e.g.
/b/id=t1,delay=uniform:10:30,e500=20/embed. Keys:

    id=NAME          state key (counters, clocks, random generator seed); make it unique
    delay=fixed:MS | uniform:A_MS:B_MS | cycle:MSxN:MSxN... | none
                     service time of POST /embed; cycle repeats a deterministic pattern by
                     arrival (cycle:10x20:40x4:120x1: 20 requests of 10 ms, 4 of 40, 1 of 120)
    fifo=N           N servers and a FIFO queue: a request's service (its delay) starts when
                     one of N is free, on a virtual clock (sleep jitter never accumulates), so
                     throughput is at most N / delay and latency grows without bound above it
    limit=N          at most N requests in the server (in service or queued): one more is
                     answered 429 with Retry-After: 0 at once
    ramp=MS          a server that keeps slowing down: the delay grows by MS for every second
                     since this spec's first embed request
    slow=AT_S:DUR_S:MS
                     a scripted slowdown: requests arriving in [first+AT, first+AT+DUR) take
                     MS instead of their delay
    stall=AT_S:DUR_S every request that overlaps [first+AT, first+AT+DUR) completes no
                     earlier than first+AT+DUR (first: this spec's first embed request)
    e500=N, e429=N, bad=N, drop=N, hang=N
                     the Nth, 2Nth, ... embed request (by arrival) answers 500, 429 with
                     Retry-After: 0, a malformed 200 body (alternately not JSON and the wrong
                     number of embeddings), closes the connection without answering, or
                     sleeps 30 s; checked in that order
    ready_after=S    GET /health answers 503 until S seconds after this spec's first /health

GET /b/<spec>/stats gives this spec's counts by outcome. Responses of /embed carry the timing
headers x-tokenization-time (0.25), x-queue-time (0.5) and x-inference-time (the injected
delay), in ms, and usage.prompt_tokens = 7 per text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class SpecState:
    spec: dict[str, str]
    rng: random.Random
    count: int = 0
    first: float | None = None
    first_health: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    free_at: list[float] = field(default_factory=list)  # fifo: when each server is free
    admitted: list[float] = field(default_factory=list)  # limit: done times of those inside


STATES: dict[str, SpecState] = {}


def state_of(raw: str) -> SpecState:
    st = STATES.get(raw)
    if st is None:
        spec = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
        st = STATES[raw] = SpecState(spec, random.Random(spec.get("id", raw)))
    return st


def draw_delay_s(st: SpecState, n: int) -> float:
    kind, *args = st.spec.get("delay", "none").split(":")
    if kind == "cycle":
        pattern = [
            float(ms) for part in args for ms in [part.split("x")[0]] * int(part.split("x")[1])
        ]
        return pattern[(n - 1) % len(pattern)] / 1e3
    if kind == "fixed":
        return float(args[0]) / 1e3
    if kind == "uniform":
        return st.rng.uniform(float(args[0]), float(args[1])) / 1e3
    return 0.0


def every(st: SpecState, key: str, n: int) -> bool:
    k = int(st.spec.get(key, "0"))
    return k > 0 and n % k == 0


async def embed(request: web.Request) -> web.StreamResponse:
    st = state_of(request.match_info["spec"])
    arrival = time.monotonic()
    if st.first is None:
        st.first = arrival
    st.count += 1
    n = st.count
    body = await request.read()
    try:
        texts = json.loads(body)["texts"]
    except (ValueError, KeyError, TypeError):
        st.outcomes["bad_request"] += 1
        return web.json_response({"error": "bad request"}, status=400)
    if every(st, "drop", n):
        st.outcomes["drop"] += 1
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    if every(st, "e500", n):
        st.outcomes["e500"] += 1
        return web.json_response({"error": "injected"}, status=500)
    if every(st, "e429", n):
        st.outcomes["e429"] += 1
        return web.json_response({"error": "busy"}, status=429, headers={"Retry-After": "0"})
    delay = draw_delay_s(st, n)
    if "ramp" in st.spec:
        delay += float(st.spec["ramp"]) / 1e3 * (arrival - st.first)
    if "slow" in st.spec:
        at, dur, ms = (float(x) for x in st.spec["slow"].split(":"))
        if st.first + at <= arrival < st.first + at + dur:
            delay = ms / 1e3
    done = arrival + delay
    if "limit" in st.spec:
        st.admitted = [t for t in st.admitted if t > arrival]
        if len(st.admitted) >= int(st.spec["limit"]):
            st.outcomes["limit"] += 1
            return web.json_response({"error": "full"}, status=429, headers={"Retry-After": "0"})
    if "fifo" in st.spec:
        if not st.free_at:
            st.free_at = [arrival] * int(st.spec["fifo"])
        slot = min(range(len(st.free_at)), key=st.free_at.__getitem__)
        done = max(arrival, st.free_at[slot]) + delay
        st.free_at[slot] = done
    if "limit" in st.spec:
        st.admitted.append(done)
    if "stall" in st.spec:
        at, dur = (float(x) for x in st.spec["stall"].split(":"))
        s0 = st.first + at
        s1 = s0 + dur
        if arrival < s1 and done > s0:
            done = max(done, s1)
    if every(st, "hang", n):
        st.outcomes["hang"] += 1
        done = arrival + 30
    wait = done - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
    headers = {
        "x-tokenization-time": "0.25",
        "x-queue-time": "0.5",
        "x-inference-time": f"{delay * 1e3:.3f}",
    }
    if every(st, "bad", n):
        st.outcomes["bad"] += 1
        if (n // int(st.spec["bad"])) % 2:
            return web.Response(body=b'{"embeddings": [[0.1, 0.2', headers=headers)
        wrong = {"embeddings": [[0.1, 0.2]] * (len(texts) + 1)}
        return web.json_response(wrong, headers=headers)
    dim = int(st.spec.get("dim", "4"))
    st.outcomes["ok"] += 1
    doc = {
        "embeddings": [[0.5] * dim for _ in texts],
        "usage": {"prompt_tokens": 7 * len(texts), "total_tokens": 7 * len(texts)},
    }
    return web.json_response(doc, headers=headers)


async def openai(request: web.Request) -> web.StreamResponse:
    st = state_of(request.match_info["spec"])
    st.count += 1
    texts = json.loads(await request.read())["input"]
    st.outcomes["ok"] += 1
    data = [{"object": "embedding", "index": i, "embedding": [0.5] * 4} for i in range(len(texts))]
    return web.json_response({"object": "list", "data": data, "usage": {"prompt_tokens": 3}})


async def health(request: web.Request) -> web.StreamResponse:
    st = state_of(request.match_info["spec"])
    now = time.monotonic()
    if st.first_health is None:
        st.first_health = now
    if now - st.first_health < float(st.spec.get("ready_after", "0")):
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ready"})


async def info(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {
            "status": "ready",
            "server_version": "fake-1",
            "runtime": "fake",
            "runtime_version": "0",
            "model": "fake-model",
            "model_id": "fake-model",
            "variant": "fp32",
            "manifest_sha256": "0" * 64,
            "model_load_ms": 12.5,
            "threads": 1,
            "spinning": False,
            "batching": {"max_batch_tokens": 8192, "max_queue": 1024},
            "pid": os.getpid(),
            "process_rss_bytes": 1,
            "library_versions": {"fake": "1"},
        }
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    st = state_of(request.match_info["spec"])
    lines = ["# HELP fake_requests_total requests", "# TYPE fake_requests_total counter"]
    for outcome, count in sorted(st.outcomes.items()):
        lines.append(f'fake_requests_total{{outcome="{outcome}"}} {count}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def stats(request: web.Request) -> web.StreamResponse:
    st = state_of(request.match_info["spec"])
    return web.json_response({"requests": st.count, "outcomes": dict(st.outcomes)})


async def noop(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=b'{"embeddings":[[0.0]]}', content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/b/{spec}/embed", embed)
    app.router.add_post("/b/{spec}/v1/embeddings", openai)
    app.router.add_get("/b/{spec}/health", health)
    app.router.add_get("/b/{spec}/info", info)
    app.router.add_get("/b/{spec}/metrics", metrics)
    app.router.add_get("/b/{spec}/stats", stats)
    app.router.add_post("/noop/embed", noop)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
