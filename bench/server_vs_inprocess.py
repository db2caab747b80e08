"""How close does the server run to the runtime's own limit? One run, ratios printed.

  1. server QPS at concurrency 16, one text per request / best in-process throughput of the same
     variant (any batch size, same threads; tokenize + run + pool + normalize)      goal >= 0.9
  2. server QPS / a naive per-request FastAPI + ORT server (bench/server_naive.py), same load
  3. HTTP overhead at concurrency 1: server p50 - in-process single-text p50 (ms)
  4. optionally (--infinity-venv): server QPS / infinity-emb serving the same ONNX model

The machine is shared and noisy, so the measurements are interleaved over --rounds rounds and
each ratio is taken within a round; the median over rounds is printed. The load generator is one
uvloop + aiohttp process with a connection pool, sending pre-encoded bodies.

    .venv/bin/python bench/server_vs_inprocess.py [--model-dir DIR | --variant fp32]
        [--threads 2] [--duration 10] [--rounds 2] [--infinity-venv /tmp/infinity-venv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "the",
    "a",
    "model",
    "server",
    "request",
    "batch",
    "vector",
    "meaning",
    "language",
    "query",
    "document",
    "search",
    "result",
    "engine",
    "latency",
    "throughput",
    "machine",
    "learning",
    "text",
    "embedding",
    "index",
    "cluster",
    "user",
    "answer",
    "data",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "while",
    "markets",
    "fell",
    "sharply",
    "on",
    "renewed",
    "inflation",
    "fears",
]


def make_texts(n: int, words: int = 24, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences of ~`words` words (about 30 tokens with MiniLM)."""
    import random

    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + f" ({i})."
        for i in range(n)
    ]


# ---- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    name: str
    url: str  # embed endpoint
    process: subprocess.Popen[bytes]
    body: Callable[[str], bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server {url} not healthy after {timeout_s} s")


def start_ours(model_dir: Path, threads: int, workers: int, log_dir: Path) -> Served:
    port = free_port()
    env = {
        **os.environ,
        "EMBENCH_MODEL_DIR": str(model_dir),
        "EMBENCH_THREADS": str(threads),
        "EMBENCH_WORKERS": str(workers),
        "EMBENCH_PORT": str(port),
        "EMBENCH_HOST": "127.0.0.1",
        "EMBENCH_LOG_LEVEL": "warning",
    }
    log = (log_dir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "server"], env=env, cwd=REPO, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/health", process)
    return Served("server", base + "/embed", process, lambda t: orjson.dumps({"texts": [t]}))


def start_naive(model_dir: Path, threads: int, log_dir: Path) -> Served:
    port = free_port()
    log = (log_dir / "naive.log").open("wb")
    command = [sys.executable, str(REPO / "bench" / "server_naive.py")]
    command += ["--model-dir", str(model_dir), "--port", str(port), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/health", process)
    return Served("naive", base + "/embed", process, lambda t: orjson.dumps({"texts": [t]}))


def start_infinity(
    venv: Path, model_dir: Path, threads: int, log_dir: Path, optimize: bool
) -> Served:
    """infinity-emb's optimum engine (ONNX Runtime) serving a copy of the same variant.

    infinity 0.0.78 + optimum 2.x only find a local ONNX file when the model id is a relative
    path, so it runs inside the copy with model id "."; pooling must be given (its "auto" means
    CLS for this engine), and its own graph optimization is off unless --infinity-optimize."""
    port = free_port()
    served_dir = log_dir / "infinity-model"
    if not served_dir.exists():
        shutil.copytree(model_dir, served_dir)
    binary = venv / "bin" / "infinity_emb"
    if not binary.exists():
        raise SystemExit(f"{binary} not found: install infinity-emb into {venv} first")
    log = (log_dir / "infinity.log").open("wb")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(log_dir / "infinity-hf-home"),
    }
    command = [str(binary), "v2", "--model-id", ".", "--engine", "optimum", "--device", "cpu"]
    command += ["--port", str(port), "--host", "127.0.0.1", "--pooling-method", "mean"]
    command += ["--batch-size", "32"]
    if not optimize:
        command.append("--onnx-disable-optimize")
    process = subprocess.Popen(command, cwd=served_dir, stdout=log, stderr=log, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/health", process, timeout_s=600)
    return Served(
        "infinity",
        base + "/embeddings",
        process,
        lambda t: orjson.dumps({"input": [t], "model": "."}),
    )


def check_parity(served: Served, embedder, texts: list[str]) -> float:
    """Min cosine of the served embeddings against the in-process runtime's, over `texts`."""
    import urllib.request

    import numpy as np

    rows = []
    for text in texts:
        request = urllib.request.Request(
            served.url, data=served.body(text), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = orjson.loads(response.read())
        rows.append(
            payload["embeddings"][0] if "embeddings" in payload else payload["data"][0]["embedding"]
        )
    got = np.array(rows, dtype=np.float64)
    want = embedder.embed(texts).astype(np.float64)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return float(cos.min())


# ---- load generation ---------------------------------------------------------------------
@dataclass
class Slice:
    """One measured slice: completions inside a fixed window (unbiased in steady state)."""

    per_s: float
    latencies_ms: list[float]
    errors: int


class LoadGen:
    """Closed-loop clients on one event loop, one keep-alive connection pool per target."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()

    async def run(
        self, served: Served, concurrency: int, duration_s: float, warmup_s: float = 0.3
    ) -> Slice:
        session = self.sessions.get(served.name)
        if session is None:
            connector = aiohttp.TCPConnector(limit=64)
            session = self.sessions[served.name] = aiohttp.ClientSession(connector=connector)
        bodies = [served.body(t) for t in self.texts]
        headers = {"content-type": "application/json"}
        start = time.perf_counter() + warmup_s
        end = start + duration_s
        latencies: list[float] = []
        errors = 0

        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while (sent := time.perf_counter()) < end:
                async with session.post(
                    served.url, data=bodies[i % len(bodies)], headers=headers
                ) as r:
                    await r.read()
                    ok = r.status == 200
                done = time.perf_counter()
                if start <= done <= end:
                    if ok:
                        latencies.append((done - sent) * 1e3)
                    else:
                        errors += 1
                i += concurrency

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return Slice(per_s=len(latencies) / duration_s, latencies_ms=latencies, errors=errors)


# ---- in-process --------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How the in-process runtime uses the threads: `streams` callers sharing one session,
    each with `threads` intra-op threads (streams x threads = the total compared)."""

    streams: int
    threads: int
    batch: int

    def __str__(self) -> str:
        return f"{self.streams}x{self.threads}t b{self.batch}"


def inprocess_throughput(embedder, texts: list[str], batch: int, duration_s: float) -> float:
    """Texts/s through embedder.embed (tokenize + run + pool + normalize) at this batch size."""
    embedder.embed(texts[:batch])
    done = 0
    i = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        embedder.embed([texts[(i + k) % len(texts)] for k in range(batch)])
        done += batch
        i += batch
    return done / (time.perf_counter() - started)


def inprocess_layout(embedders: dict, texts: list[str], layout: Layout, duration_s: float) -> float:
    """Texts/s of `layout.streams` threads each looping embed() on one shared session."""
    embedder = embedders[layout.threads]
    if layout.streams == 1:
        return inprocess_throughput(embedder, texts, layout.batch, duration_s)
    import threading

    results: list[float] = []
    workers = [
        threading.Thread(
            target=lambda k=k: results.append(
                inprocess_throughput(embedder, texts[k * 64 :] + texts, layout.batch, duration_s)
            )
        )
        for k in range(layout.streams)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(results)


def inprocess_single_latencies_ms(embedder, texts: list[str], duration_s: float) -> list[float]:
    latencies = []
    i = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        t = time.perf_counter()
        embedder.embed([texts[i % len(texts)]])
        latencies.append((time.perf_counter() - t) * 1e3)
        i += 1
    return latencies


# ---- main --------------------------------------------------------------------------------
def prepared_dir(model: str, variant: str) -> Path:
    command = [sys.executable, "-m", "embench.cli", "prepare", "--json"]
    command += ["--model", model, "--variant", variant]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return Path(json.loads(out.stdout)[0]["path"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, help="prepared variant (default: embench prepare)"
    )
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="total threads, for the server and for in-process runs alike",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server inference workers (threads are split)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument(
        "--slice", type=float, default=2.0, help="interleaving grain: each point is measured "
        "in slices of this many seconds, alternating with the points it is compared to",
    )  # fmt: skip
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--inprocess-layouts",
        choices=["same", "all"],
        default="same",
        help="in-process baseline: the server's own layout (workers x threads) at any batch "
        "size, or also every other split of the same total threads (stricter)",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--infinity-venv", type=Path, help="venv with infinity-emb installed")
    parser.add_argument(
        "--infinity-optimize", action="store_true", help="let infinity optimize the graph"
    )
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/embench-bench-server"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def pick_layouts(embedders: dict, texts: list[str], layouts: list[Layout]) -> list[Layout]:
    """The two best in-process layouts, from two interleaved sweeps (the machine is noisy)."""
    runs: dict[Layout, list[float]] = {layout: [] for layout in layouts}
    for _ in range(2):
        for layout in layouts:
            runs[layout].append(inprocess_layout(embedders, texts, layout, 1.5))
    best = {layout: max(v) for layout, v in runs.items()}
    print("in-process sweep (texts/s): " + ", ".join(f"{k}={v:.0f}" for k, v in best.items()))
    return sorted(best, key=best.get, reverse=True)[:2]


async def measure(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    from server.runtime.onnx_embedder import OnnxEmbedder

    texts = make_texts(512)
    if args.threads % args.workers:
        raise SystemExit("--threads must be a multiple of --workers")
    server_threads = args.threads // args.workers
    if args.inprocess_layouts == "all":
        # Every way to spend the same total threads: streams x intra-op threads.
        splits = [
            (s, args.threads // s) for s in range(1, args.threads + 1) if args.threads % s == 0
        ]
    else:  # the server's own layout: its workers x its threads per worker
        splits = [(args.workers, server_threads)]
    embedders = {
        t: OnnxEmbedder(model_dir, intra_op_threads=t)
        for t in {t for _, t in splits} | {args.threads, server_threads}
    }
    embedder = embedders[args.threads]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    layouts = [Layout(s, t, b) for s, t in splits for b in sizes]
    tokens = [t.n_tokens for t in embedder.tokenize(texts)]
    print(
        f"model {model_dir}\n{args.threads} threads in all (server: {args.workers} worker(s) x "
        f"{server_threads}), concurrency {args.concurrency}, "
        f"{args.duration:.0f} s per point in {args.slice:.0f} s interleaved slices, "
        f"texts of {statistics.mean(tokens):.1f} tokens on average"
    )
    servers: list[Served] = []
    load = LoadGen(texts)
    try:
        ours = start_ours(model_dir, server_threads, args.workers, args.log_dir)
        servers.append(ours)
        if not args.skip_naive:
            servers.append(start_naive(model_dir, args.threads, args.log_dir))
        if args.infinity_venv:
            servers.append(
                start_infinity(
                    args.infinity_venv,
                    model_dir,
                    args.threads,
                    args.log_dir,
                    args.infinity_optimize,
                )
            )
        for served in servers:
            cosine = check_parity(served, embedder, texts[:8])
            print(f"{served.name}: min cosine vs in-process over 8 texts {cosine:.6f}")
            if cosine < 0.999:
                raise SystemExit(f"{served.name} does not compute the same embeddings")
        for served in servers:  # warm the connection pools and the servers
            await load.run(served, args.concurrency, 1.0)

        best_layouts = pick_layouts(embedders, texts, layouts)
        slices = max(1, round(args.duration / args.slice))
        inproc: list[float] = []
        qps: dict[str, list[float]] = {s.name: [] for s in servers}
        errors = 0
        for _ in range(slices):  # throughput at concurrency C, interleaved
            inproc.append(
                max(inprocess_layout(embedders, texts, x, args.slice / 2) for x in best_layouts)
            )
            for served in servers:
                result = await load.run(served, args.concurrency, args.slice)
                qps[served.name].append(result.per_s)
                errors += result.errors
        single: list[float] = []
        c1: list[float] = []
        c1_pairs: list[float] = []
        for _ in range(slices):  # latency at concurrency 1, interleaved
            a = inprocess_single_latencies_ms(embedders[server_threads], texts, args.slice)
            b = (await load.run(ours, 1, args.slice)).latencies_ms
            single += a
            c1 += b
            c1_pairs.append(statistics.median(b) - statistics.median(a))
    finally:
        await load.close()
        for served in servers:
            served.stop()

    med = statistics.median
    figures: dict[str, object] = {
        "threads": args.threads,
        "server_workers": args.workers,
        "concurrency": args.concurrency,
        "best_inprocess_layouts": [str(x) for x in best_layouts],
        "inprocess_best_texts_per_s": med(inproc),
        "errors": errors,
    }
    for name, values in qps.items():
        figures[f"{name}_qps"] = med(values)
        figures[f"ratio_server_vs_{name}"] = (
            med([o / v for o, v in zip(qps["server"], values, strict=True)])
            if name != "server"
            else 1.0
        )
    figures["ratio_server_vs_inprocess"] = med(
        [o / i for o, i in zip(qps["server"], inproc, strict=True)]
    )
    figures["server_p50_ms_c1"] = med(c1)
    figures["inprocess_single_p50_ms"] = med(single)
    figures["http_overhead_ms_c1"] = med(c1_pairs)
    figures["slices"] = {"inprocess": inproc, **qps, "c1_overhead_ms": c1_pairs}
    return figures


def report(figures: dict[str, object], args: argparse.Namespace) -> None:
    f = figures
    pairs = len(f["slices"]["inprocess"])
    print(f"\n== server vs the runtime's own limit (medians over {pairs} slice pairs) ==")
    layouts = " or ".join(f["best_inprocess_layouts"])
    print(
        f"in-process best                   {f['inprocess_best_texts_per_s']:8.1f} texts/s "
        f"({layouts}; streams x threads = {f['threads']})"
    )
    print(
        f"server c{f['concurrency']}, 1 text/request         {f['server_qps']:8.1f} QPS "
        f"({f['server_workers']} worker(s) x {f['threads'] // f['server_workers']} threads, "
        f"{f['errors']} errors)"
    )
    ratio = f["ratio_server_vs_inprocess"]
    verdict = "met" if ratio >= 0.9 else "NOT met"
    print(f"ratio server / in-process best    {ratio:.3f}  (goal >= 0.9: {verdict})")
    if "naive_qps" in f:
        print(
            f"ratio server / naive per-request  {f['ratio_server_vs_naive']:.3f}  "
            f"(naive FastAPI + ORT, no batching: {f['naive_qps']:.1f} QPS)"
        )
    if "infinity_qps" in f:
        r = f["ratio_server_vs_infinity"]
        verdict = "met" if r >= 1.3 else "NOT met"
        print(
            f"ratio server / infinity-emb       {r:.3f}  "
            f"(goal >= 1.3: {verdict}; infinity {f['infinity_qps']:.1f} QPS)"
        )
    else:
        print("ratio server / infinity-emb       not measured (pass --infinity-venv)")
    print(
        f"HTTP overhead at c1               {f['http_overhead_ms_c1']:.2f} ms  (server p50 "
        f"{f['server_p50_ms_c1']:.2f} ms, in-process single-text p50 "
        f"{f['inprocess_single_p50_ms']:.2f} ms; median of per-slice differences)"
    )


def main() -> int:
    args = parse_args()
    model_dir = args.model_dir or prepared_dir(args.model, args.variant)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop

        figures = uvloop.run(measure(args, model_dir))
    except ImportError:
        figures = asyncio.run(measure(args, model_dir))
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
