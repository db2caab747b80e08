"""How repeatable are the figures, and what does the detector make of their noise? One run.

  1. Interval coverage: the same scenarios run several times back to back against one server
     (the scenarios interleaved within each round, so a slow stretch of the machine hits them
     all alike); for every figure that carries an interval (QPS, p50/p90/p95/p99), how often
     does a round's value fall inside the previous round's 95% interval?   goal >= 90%
  2. The detector on that recorded noise: night-to-night histories drawn from the rounds'
     relative deviations, with injected 5%, 10% and 20% steps and one outlier night per
     history (bench/detector_noise.py): false alarms (goal: none) and detection within three
     nights of a 10% step (goal >= 95%).

    .venv/bin/python bench/repeatability.py [--variant fp32] [--rounds 6]
        [--scenarios closed-c16,open-r50-poisson] [--json out.json]

The server is this project's, started as a process on the prepared model; the client is
`python -m client run` with benchmark.yaml's scenario settings (its own process, as in a run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from detector_noise import describe, measure, print_rates, resampled  # noqa: E402
from server_vs_inprocess import prepared_dir, start_ours  # noqa: E402

from client.result import load_result  # noqa: E402
from client.scenario import RunLabels  # noqa: E402
from embench.bench import scenario_file, write_scenario_file  # noqa: E402
from embench.config import load_config  # noqa: E402
from embench.store.detect import settings_from_config  # noqa: E402

# figure -> (low, high) fields of its interval
INTERVALS: dict[str, tuple[str, str]] = {
    "qps": ("qps_ci_low", "qps_ci_high"),
    **{f"p{q}_ms": (f"p{q}_ci_low_ms", f"p{q}_ci_high_ms") for q in (50, 90, 95, 99)},
}


# P(|Z| < 1.96 / sqrt(2)): a second estimate inside the first's exact 95% interval
IDEAL_COVERAGE = statistics.NormalDist().cdf(1.959964 / 2**0.5) * 2 - 1


def run_round(url: str, scenarios: Path, out: Path) -> dict[str, dict[str, Any]]:
    """One client run of every scenario; each scenario's figures by name."""
    command = [sys.executable, "-m", "client", "run", "--url", url]
    command += ["--scenario-file", str(scenarios), "--out", str(out), "--progress", "none"]
    subprocess.run(command, check=True, cwd=REPO)
    result = load_result(out)
    return {s.name: s.model_dump() for s in result.scenarios}


def coverage(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, tuple[int, int]]]:
    """scenario -> figure -> (inside the previous round's interval, pairs compared)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for previous, current in itertools.pairwise(rounds):
        for name, now in current.items():
            before = previous.get(name)
            if before is None:
                continue
            for figure, (low, high) in INTERVALS.items():
                value, lo, hi = now.get(figure), before.get(low), before.get(high)
                if value is None or lo is None or hi is None:
                    continue
                inside, pairs = out.setdefault(name, {}).get(figure, (0, 0))
                out[name][figure] = (inside + int(lo <= value <= hi), pairs + 1)
    return out


def noise_pool(
    rounds: list[dict[str, dict[str, Any]]], figure: str
) -> list[tuple[float, float | None]]:
    """(each round's deviation from its scenario's median, the round's own relative standard
    error from its interval), pooled over the scenarios: the detector's noise model."""
    low, high = INTERVALS[figure]
    pool: list[tuple[float, float | None]] = []
    for name in rounds[0]:
        figures = [r[name] for r in rounds if r.get(name, {}).get(figure)]
        if len(figures) < 3:
            continue
        median = statistics.median(f[figure] for f in figures)
        for f in figures:
            own = None
            if f.get(low) is not None and f.get(high) is not None:
                own = (f[high] - f[low]) / (2 * 1.96) / f[figure]
            pool.append((f[figure] / median - 1, own))
    return pool


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--scenarios", default="closed-c16,open-r50-poisson")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--histories", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    config = load_config()
    model_dir = prepared_dir(args.model, args.variant)
    with tempfile.TemporaryDirectory(prefix="repeatability-") as tmp:
        work = Path(tmp)
        document = scenario_file(
            config,
            args.scenarios.split(","),
            RunLabels(labels={"trigger": "cli"}),
            tokenizer=str(model_dir / "tokenizer.json"),
        )
        scenarios = write_scenario_file(work / "scenarios.json", document)
        served = start_ours(model_dir, args.threads, args.workers, work)
        rounds: list[dict[str, dict[str, Any]]] = []
        try:
            for index in range(args.rounds):
                rounds.append(
                    run_round(served.url.rsplit("/", 1)[0], scenarios, work / f"{index}.json")
                )
                summary = ", ".join(
                    f"{name} {s['qps']:.1f} QPS p99 {s['p99_ms'] or float('nan'):.1f} ms"
                    f"{'' if s['valid'] else ' INVALID'}"
                    for name, s in rounds[-1].items()
                )
                print(f"round {index + 1}/{args.rounds}: {summary}", flush=True)
        finally:
            served.stop()

    table = coverage(rounds)
    inside = sum(i for figures in table.values() for i, _ in figures.values())
    pairs = sum(n for figures in table.values() for _, n in figures.values())
    print("\ninterval coverage: a round's figure inside the previous round's 95% interval")
    for name, figures in table.items():
        cells = ", ".join(f"{f} {i}/{n}" for f, (i, n) in figures.items())
        print(f"  {name}: {cells}")
    share = inside / pairs if pairs else float("nan")
    print(f"  all figures: {inside}/{pairs} = {share:.0%} (goal >= 90%)")
    print(
        f"  (two runs of an unchanged host, each with an exact 95% interval: a run's figure "
        f"falls inside the other's interval {IDEAL_COVERAGE:.0%} of the time, since the "
        "difference of two estimates has sqrt(2) times the standard error of one)"
    )

    pools = {figure: noise_pool(rounds, figure) for figure in ("qps", "p99_ms")}
    noise = resampled(f"recorded: {len(rounds)} rounds of {args.scenarios}, resampled", pools)
    settings = settings_from_config(config.benchmark.regression)
    print("\n" + describe(settings, args.histories))
    rates = measure(noise, settings, args.histories, seed=0)
    print_rates(noise, rates, args.histories)
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": rounds, "coverage": share, "detector": rates}, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
