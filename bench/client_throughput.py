"""How many requests per second the load client sustains on ONE core, next to wrk, in one run.

    .venv/bin/python bench/client_throughput.py [--duration 5] [--concurrency 16,64]

A no-op HTTP server (raw asyncio protocol, canned 200 answer with one tiny embedding) runs on
core 1; the client (`python -m client run`, closed loop, unique texts, full response
validation, exactly as in a benchmark) and then wrk (one thread, the same POST body size) run
pinned to core 0 with taskset, against the same endpoint on 127.0.0.1. The figure that
matters is the client's requests/s (goal: >= 5,000, so the client is never the bottleneck of
what it measures); wrk shows what the endpoint and one core allow, and the ratio compares the
two in the same run on the same (noisy, shared) machine. Every load loop is bounded in time.

Needs: taskset (util-linux), wrk (Debian package `wrk`: apt-get install -y wrk), 2+ cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 5000.0
BODY = b'{"embeddings":[[0.0]],"usage":{"prompt_tokens":1}}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class NoOp(asyncio.Protocol):
    """Answers every request (any method and path) with RESPONSE; keep-alive, no pipelining
    beyond what arrives in order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            m = re.search(rb"content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


def serve(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(NoOp, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        async with server:
            await asyncio.sleep(300)  # bounded: the benchmark stops it long before

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(url: str, concurrency: int, duration: float, loop: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        spec = (
            f"name=bench,mode=closed,concurrency={concurrency},min_requests=1,"
            f"min_duration_s={duration},max_duration_s={duration * 2}"
        )
        cmd = [
            "taskset", "-c", "0", sys.executable, "-m", "client", "run", "--url", url,
            "--scenarios", spec, "--out", str(out), "--warmup-duration", "1",
            "--warmup-requests", "100", "--progress", "none", "--wait-timeout", "10",
            "--loop", loop,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO, timeout=duration * 4 + 30)
        s = json.loads(out.read_text())["scenarios"][0]
        return s["qps"], s


def run_wrk(url: str, connections: int, duration: float) -> float:
    body = json.dumps({"texts": ["x" * 150]})  # about the size of a 32-token text request
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script = f.name
    try:
        out = subprocess.run(
            ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s",
             "-s", script, url],
            check=True, capture_output=True, text=True, timeout=duration + 30,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return float(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="16,64", help="client connections to try")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    for tool in ("taskset", "wrk"):
        if not shutil.which(tool):
            print(f"error: {tool} not found (wrk: apt-get install -y wrk)", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("error: needs 2 cores (client on core 0, server on core 1)", file=sys.stderr)
        return 2
    duration = min(max(args.duration, 1.0), 30.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("no-op server did not start")
        base = f"http://127.0.0.1:{port}"
        rows = []
        for loop in ("uvloop", "asyncio"):
            for c in levels:
                qps, s = run_client(base, c, duration, loop)
                rows.append((loop, c, qps, s))
                print(
                    f"client ({loop}, c={c}): {qps:,.0f} req/s, p50 {s['p50_ms']:.2f} ms, "
                    f"p99 {s['p99_ms']:.2f} ms, client CPU {s['client_cpu_pct_mean'] or 0:.0f}% "
                    f"of one core, errors {s['requests_failed']}",
                    flush=True,
                )
        wrk_c = max(levels)
        wrk = run_wrk(base + "/embed", wrk_c, duration)
        print(f"wrk (1 thread, c={wrk_c}): {wrk:,.0f} req/s", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
    best_loop, best_c, best, _ = max(rows, key=lambda r: r[2])
    print()
    print(f"client, one core: {best:,.0f} req/s (best: {best_loop}, concurrency {best_c})")
    print(f"wrk, one core:    {wrk:,.0f} req/s")
    print(f"ratio client/wrk: {best / wrk:.2f}")
    verdict = "PASS" if best >= GOAL else "BELOW GOAL"
    print(f"goal >= {GOAL:,.0f} req/s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
