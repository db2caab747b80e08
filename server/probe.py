"""`python -m server.probe`: a short fixed probe of the host, printed as one JSON object.

The benchmark runs it on the server's cores (in the server's container, or pinned to the
server's cpuset) before and after its scenarios, so that a result says how fast the machine
itself was while it was measured: a host that slowed down between two nights (a lower clock,
a noisy neighbour, a throttled quota) shows up here and is not mistaken for a regression.

Three scores, each the best of REPEATS timed samples of fixed work:
- compute_gflops: float32 matrix products (numpy's BLAS) on every core the probe may use;
  the work per sample grows with the core count, so a sample lasts about as long anywhere.
- memory_gb_per_s: a copy of an array far larger than any cache (bytes read + written).
- single_thread_score: iterations per second of a fixed pure-Python loop.

Best-of, not the median: interference (an interrupt, another process's time slice) only ever
adds time to a sample, so the fastest sample is the most repeatable estimate of what the host
can do; a sustained slowdown (a lower clock, a core shared for the whole probe) slows every
sample, so the best one still shows it. Total wall time is about a second.

Only numpy and the standard library: every server image has both, and nothing else is needed.
Exit codes: 0 with the JSON on stdout; 1 when the probe failed (the reason on stderr)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPEATS = 5
MATRIX_N = 1024  # one product: 2 * 1024**3 = 2.1 GFLOP, ~25 ms on one current core
PRODUCTS_PER_CORE = 2  # products per sample and core: ~50 ms a sample, any core count
# Per array: source + target = 128 MiB, beyond the L3 one core reaches on current servers
# (about 100 MB at most), and small beside the server's memory limit.
COPY_BYTES = 64 * 2**20
COPIES = 4  # per sample: ~35 ms at 15 GB/s
LOOP_ITERATIONS = 500_000  # per sample: ~40 ms on a current core
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """The cores this process may run on: its affinity (a container's cpuset), capped by a
    CFS quota (a container's --cpus), rounded up."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cfs_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cfs_quota() -> float | None:
    """CPUs the cgroup's quota allows (quota / period), or None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def best_seconds(sample: Callable[[], object], repeats: int = REPEATS) -> float:
    """The fastest of `repeats` timed runs of `sample`, after one untimed run (which faults
    in pages and starts the BLAS threads)."""
    sample()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        sample()
        best = min(best, time.perf_counter() - started)
    return best


def compute_gflops(cpus: int, repeats: int = REPEATS) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATRIX_N, MATRIX_N), dtype=np.float32)
    b = rng.standard_normal((MATRIX_N, MATRIX_N), dtype=np.float32)
    out = np.empty_like(a)
    products = PRODUCTS_PER_CORE * cpus

    def sample() -> None:
        for _ in range(products):
            np.matmul(a, b, out=out)

    return 2 * MATRIX_N**3 * products / best_seconds(sample, repeats) / 1e9


def memory_gb_per_s(repeats: int = REPEATS) -> float:
    import numpy as np

    source = np.ones(COPY_BYTES // 4, dtype=np.float32)
    target = np.empty_like(source)

    def sample() -> None:
        for _ in range(COPIES):
            np.copyto(target, source)

    return 2 * COPY_BYTES * COPIES / best_seconds(sample, repeats) / 1e9


def _loop(iterations: int) -> int:
    # Integer arithmetic, a branch and a list store: the interpreter's everyday work.
    total = 0
    slots = [0] * 64
    for i in range(iterations):
        if i & 1:
            total += i * 3
        else:
            total ^= i
        slots[i & 63] = total
    return total


def single_thread_score(repeats: int = REPEATS) -> float:
    return LOOP_ITERATIONS / best_seconds(lambda: _loop(LOOP_ITERATIONS), repeats)


def run_probe(repeats: int = REPEATS) -> dict[str, Any]:
    """The three scores, when the probe started, its wall time and the cores it used."""
    started = time.perf_counter()
    at = datetime.now(UTC)
    cpus = usable_cpus()
    scores = {
        "compute_gflops": compute_gflops(cpus, repeats),
        "memory_gb_per_s": memory_gb_per_s(repeats),
        "single_thread_score": single_thread_score(repeats),
    }
    return {
        "at": at.isoformat(),
        **{name: round(value, 3) for name, value in scores.items()},
        "seconds": round(time.perf_counter() - started, 3),
        "cpus": cpus,
    }


def main() -> int:
    # numpy's BLAS sizes its thread pool when it is imported: one thread per usable core,
    # whatever the server's own settings (OMP_NUM_THREADS=1, say) left in the environment.
    cpus = str(usable_cpus())
    for name in BLAS_THREAD_VARIABLES:
        os.environ[name] = cpus
    try:
        result = run_probe()
    except Exception as exc:  # one line that says why, for the benchmark's notes
        print(f"server.probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
