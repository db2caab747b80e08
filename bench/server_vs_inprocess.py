"""How close does the server run to the runtime's own limit? One run, ratios printed.

  1. server QPS at concurrency 16, one text per request / best in-process throughput of the same
     variant on the same threads (any batch size; by default any split of the threads into
     streams x intra-op threads too; tokenize + run + pool + normalize)           goal >= 0.9
  2. server QPS / a naive per-request FastAPI + ORT server (bench/server_naive.py), same load
  3. HTTP overhead at concurrency 1: server p50 - in-process single-text p50 (ms)
  4. optionally (--infinity-venv): server QPS / infinity-emb serving the same ONNX model

The machine is shared and noisy, so the measurements are interleaved in slices and each ratio is
taken within a slice; the median over slices is printed. The load generator is wrk (C, one
thread, keep-alive connections, closed loop: each connection sends its next request when the
last one is answered), cycling through pre-encoded bodies: it runs on the same cores as the
servers, so it must cost them as little as possible; its own CPU use is printed.

    .venv/bin/python bench/server_vs_inprocess.py [--model-dir DIR | --variant fp32]
        [--threads 2] [--workers 2] [--duration 10] [--infinity-venv /tmp/infinity-venv]

Needs wrk (Debian package `wrk`). infinity-emb goes into a virtualenv of its own:
    python3.11 -m venv /tmp/infinity-venv
    /tmp/infinity-venv/bin/pip install "infinity-emb[server,optimum]==0.0.78" torch==2.13.0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
    """One measured slice of closed-loop load."""

    per_s: float
    p50_ms: float
    errors: int
    loadgen_cpu: float  # the load generator's CPU seconds per second (1.0 = one core)


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_script(served: Served, texts: list[str], directory: Path) -> Path:
    """A wrk Lua script that POSTs the texts' bodies in turn, one per request."""
    path = directory / f"wrk-{served.name}.lua"
    bodies = ",\n".join("  " + json.dumps(served.body(t).decode()) for t in texts)
    path.write_text(
        f"local bodies = {{\n{bodies}\n}}\n"
        "local i = 0\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\n"
        "end\n"
    )
    return path


def parse_wrk(out: str) -> tuple[float, float, int]:
    """Requests/s, p50 (ms) and failed requests (non-2xx and socket errors) from wrk's output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if rate is None or p50 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return float(rate.group(1)), float(p50.group(1)) * _WRK_UNITS[p50.group(2)], errors


class LoadGen:
    """Closed-loop load from wrk, one script (body rotation) per target."""

    def __init__(self, texts: list[str], directory: Path) -> None:
        self.texts = texts
        self.directory = directory
        self.scripts: dict[str, Path] = {}

    def run(self, served: Served, concurrency: int, duration_s: int) -> Slice:
        script = self.scripts.get(served.name)
        if script is None:
            script = self.scripts[served.name] = wrk_script(served, self.texts, self.directory)
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--latency"]
        command += ["-s", str(script), served.url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=duration_s + 60
        ).stdout
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        per_s, p50_ms, errors = parse_wrk(out)
        return Slice(per_s=per_s, p50_ms=p50_ms, errors=errors, loadgen_cpu=cpu / elapsed)


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
        "--workers",
        default="auto",
        help="server inference workers, the threads split between them; auto: the split of "
        "the best in-process layout",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=30, help="seconds per point")
    parser.add_argument(
        "--slice", type=int, default=5, help="interleaving grain: each point is measured "
        "in slices of this many seconds, alternating with the points it is compared to (a "
        "closed loop starts empty, so a slice undercounts by about one latency: keep it long)",
    )  # fmt: skip
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--inprocess-layouts",
        choices=["same", "all"],
        default="all",
        help="in-process baseline: every split of the total threads into streams x intra-op "
        "threads at any batch size (all), or only the server's own split (same)",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--infinity-venv", type=Path, help="venv with infinity-emb installed")
    parser.add_argument(
        "--infinity-optimize", action="store_true", help="let infinity optimize the graph"
    )
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/embench-bench-server"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.workers != "auto":
        try:
            args.workers = int(args.workers)
        except ValueError:
            parser.error(f"--workers: expected a number or auto, got {args.workers!r}")
        if args.workers < 1 or args.threads % args.workers:
            parser.error("--workers must divide --threads")
    elif args.inprocess_layouts == "same":
        parser.error("--inprocess-layouts same needs --workers N")
    return args


def pick_layouts(embedders: dict, texts: list[str], layouts: list[Layout]) -> list[Layout]:
    """The in-process layouts, best first, by the better of two interleaved sweeps."""
    runs: dict[Layout, list[float]] = {layout: [] for layout in layouts}
    for _ in range(2):
        for layout in layouts:
            runs[layout].append(inprocess_layout(embedders, texts, layout, 1.5))
    best = {layout: max(v) for layout, v in runs.items()}
    print("in-process sweep (texts/s): " + ", ".join(f"{k}={v:.0f}" for k, v in best.items()))
    return sorted(best, key=best.get, reverse=True)


def measure(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    from server.runtime.onnx_embedder import OnnxEmbedder

    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    texts = make_texts(512)
    if args.inprocess_layouts == "all":
        # Every way to spend the same total threads: streams x intra-op threads.
        splits = [
            (s, args.threads // s) for s in range(1, args.threads + 1) if args.threads % s == 0
        ]
    else:  # the server's own layout: its workers x its threads per worker
        splits = [(args.workers, args.threads // args.workers)]
    embedders = {t: OnnxEmbedder(model_dir, intra_op_threads=t) for t in {t for _, t in splits}}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    tokens = [t.n_tokens for t in next(iter(embedders.values())).tokenize(texts)]
    print(
        f"model {model_dir}\n{args.threads} threads in all, concurrency {args.concurrency}, "
        f"{args.duration:g} s per point in {args.slice:g} s interleaved slices, "
        f"texts of {statistics.mean(tokens):.1f} tokens on average"
    )
    ranked = pick_layouts(embedders, texts, [Layout(s, t, b) for s, t in splits for b in sizes])
    # The sweep's best layout, measured for as long as each server slice. (The best of two
    # layouts per slice would be a maximum of two noisy samples: biased upwards.)
    best = ranked[0]
    workers = best.streams if args.workers == "auto" else args.workers
    server_threads = args.threads // workers
    if server_threads not in embedders:
        embedders[server_threads] = OnnxEmbedder(model_dir, intra_op_threads=server_threads)
    print(f"server: {workers} worker(s) x {server_threads} thread(s)")
    servers: list[Served] = []
    load = LoadGen(texts, args.log_dir)
    try:
        ours = start_ours(model_dir, server_threads, workers, args.log_dir)
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
        reference = embedders[server_threads]
        for served in servers:
            cosine = check_parity(served, reference, texts[:8])
            print(f"{served.name}: min cosine vs in-process over 8 texts {cosine:.6f}")
            if cosine < 0.999:
                raise SystemExit(f"{served.name} does not compute the same embeddings")
        for served in servers:  # warm the servers
            load.run(served, args.concurrency, 2)

        slices = max(1, round(args.duration / args.slice))
        inproc: list[float] = []
        qps: dict[str, list[float]] = {s.name: [] for s in servers}
        loadgen_cpu: list[float] = []
        errors = 0
        for _ in range(slices):  # throughput at concurrency C, interleaved
            inproc.append(inprocess_layout(embedders, texts, best, args.slice))
            for served in servers:
                result = load.run(served, args.concurrency, args.slice)
                qps[served.name].append(result.per_s)
                errors += result.errors
                if served is ours:
                    loadgen_cpu.append(result.loadgen_cpu)
        single: list[float] = []
        c1: list[float] = []
        c1_pairs: list[float] = []
        for _ in range(slices):  # latency at concurrency 1, interleaved
            a = statistics.median(inprocess_single_latencies_ms(reference, texts, args.slice))
            b = load.run(ours, 1, args.slice).p50_ms
            single.append(a)
            c1.append(b)
            c1_pairs.append(b - a)
    finally:
        for served in servers:
            served.stop()

    med = statistics.median
    figures: dict[str, object] = {
        "threads": args.threads,
        "server_workers": workers,
        "concurrency": args.concurrency,
        "best_inprocess_layout": str(best),
        "inprocess_best_texts_per_s": med(inproc),
        "errors": errors,
        "loadgen_cpu_cores": med(loadgen_cpu),
    }
    for name, values in qps.items():
        figures[f"{name}_qps"] = med(values)
        figures[f"ratio_server_vs_{name}"] = (
            med([o / v for o, v in zip(qps["server"], values, strict=True)])
            if name != "server"
            else 1.0
        )
    per_slice = [o / i for o, i in zip(qps["server"], inproc, strict=True)]
    figures["ratio_server_vs_inprocess"] = med(per_slice)
    figures["ratio_server_vs_inprocess_range"] = [min(per_slice), max(per_slice)]
    figures["server_p50_ms_c1"] = med(c1)
    figures["inprocess_single_p50_ms"] = med(single)
    figures["http_overhead_ms_c1"] = med(c1_pairs)
    figures["slices"] = {"inprocess": inproc, **qps, "c1_overhead_ms": c1_pairs}
    return figures


def report(figures: dict[str, object], args: argparse.Namespace) -> None:
    f = figures
    pairs = len(f["slices"]["inprocess"])
    print(f"\n== server vs the runtime's own limit (medians over {pairs} slice pairs) ==")
    layouts = f["best_inprocess_layout"]
    print(
        f"in-process best                   {f['inprocess_best_texts_per_s']:8.1f} texts/s "
        f"({layouts}; streams x threads = {f['threads']})"
    )
    print(
        f"server c{f['concurrency']}, 1 text/request         {f['server_qps']:8.1f} QPS "
        f"({f['server_workers']} worker(s) x {f['threads'] // f['server_workers']} threads, "
        f"{f['errors']} errors; wrk used {100 * f['loadgen_cpu_cores']:.1f}% of a core)"
    )
    ratio = f["ratio_server_vs_inprocess"]
    verdict = "met" if ratio >= 0.9 else "NOT met"
    low, high = f["ratio_server_vs_inprocess_range"]
    print(
        f"ratio server / in-process best    {ratio:.3f}  (goal >= 0.9: {verdict}; slices "
        f"{low:.3f} to {high:.3f})"
    )
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
    figures = measure(args, model_dir)
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
