"""`embench prepare`, `run`, `bench`, `check-config` and `host-pools`: the pipeline on this
machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from embench.cli.options import (
    add_db_url,
    add_json,
    add_launcher,
    add_selection,
    name_list,
    variant_list,
)
from embench.config import ALL_VARIANTS, RUNTIME_VARIANTS, load_config
from embench.console import stdout
from embench.errors import EmbenchError


def add_commands(commands: Any) -> None:
    prepare = commands.add_parser(
        "prepare", help="export, optimize and quantize a model; check parity; cache the result"
    )
    prepare.add_argument("--model", required=True, help="model id from models.yaml")
    prepare.add_argument(
        "--runtime",
        choices=tuple(RUNTIME_VARIANTS),
        help="one runtime (default: each runtime models.yaml lists for the model)",
    )
    prepare.add_argument(
        "--variant",
        type=variant_list,
        help=f"comma-separated, from {','.join(ALL_VARIANTS)} (default: the model's list)",
    )
    prepare.add_argument("--cache-dir", type=Path, help="artifact cache (default: data dir)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when cached")
    add_json(prepare, "print JSON instead of a table")
    prepare.set_defaults(handler=_cmd_prepare)

    run = commands.add_parser(
        "run",
        help="run the whole DAG once on this machine",
        description="The whole DAG once, on this machine, the way `airflow dags test` runs it: "
        "an embedded Airflow home (SQLite metadata) under the data dir, the local provisioner, "
        "the SQLite results store unless EMBENCH_DB_URL says otherwise. Prints the task graph "
        "as it runs, the comparison table and the report's path; Airflow's own logs go to a "
        "file.",
    )
    add_selection(run)
    run.add_argument("--repetitions", type=int)
    run.add_argument("--provisioner", choices=["local", "ssh", "ec2"])
    add_launcher(run)
    run.add_argument("--fail-on-regression", action="store_true")
    run.add_argument(
        "--autotune",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tune the server's settings for this host before each target "
        "(default: benchmark.yaml's autotune.enabled; cached per host fingerprint)",
    )
    run.set_defaults(handler=_cmd_run)

    bench = commands.add_parser(
        "bench", help="run benchmark.yaml's scenarios against a running server (the client)"
    )
    bench.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    bench.add_argument("--scenario", type=name_list, help="comma-separated names (default: all)")
    bench.add_argument("--out", type=Path, help="result JSON (default: in the data dir)")
    bench.add_argument("--model", help="label the result (default: the server's /info)")
    bench.add_argument("--variant", help="label the result (default: the server's /info)")
    bench.add_argument("--ingest", action="store_true", help="store the result when done")
    add_db_url(bench)
    bench.set_defaults(handler=_cmd_bench)

    check = commands.add_parser("check-config", help="validate models.yaml and benchmark.yaml")
    add_json(check, "print JSON instead of text")
    check.set_defaults(handler=_cmd_check_config)

    pools = commands.add_parser(
        "host-pools",
        help="the Airflow pools the DAG's host slots need, as `airflow pools import` JSON",
    )
    pools.set_defaults(handler=_cmd_host_pools)


def _cmd_run(args: argparse.Namespace) -> int:
    from embench.local_run import main as run_main

    return run_main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from client.cli import main as client_main
    from client.scenario import RunLabels
    from embench.bench import scenario_file, write_scenario_file
    from embench.paths import data_dir
    from embench.provenance import git_sha

    config = load_config(args.config_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or data_dir() / "results" / f"bench-{stamp}.json"
    labels = RunLabels(
        model=args.model, variant=args.variant, git_sha=git_sha(), labels={"trigger": "cli"}
    )
    scenarios = write_scenario_file(
        out.with_name(out.stem + ".scenarios.json"), scenario_file(config, args.scenario, labels)
    )
    status = client_main(
        ["run", "--url", args.url, "--scenario-file", str(scenarios), "--out", str(out)]
    )
    if status != 0:
        raise EmbenchError(f"the load client exited with status {status}; result (if any): {out}")
    print(f"result: {out}")
    if args.ingest:
        from embench.cli.store import cmd_ingest

        ingest_args = argparse.Namespace(
            config_dir=args.config_dir, db_url=args.db_url, paths=[out], no_detect=False, json=False
        )
        return cmd_ingest(ingest_args)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from embench.prepare import prepare_targets  # keeps `embench --help` fast

    config = load_config(args.config_dir)
    targets = [
        (runtime, variant)
        for runtime, variant in config.model(args.model).targets()
        if (args.runtime is None or runtime == args.runtime)
        and (args.variant is None or variant in args.variant)
    ]
    if args.runtime and args.variant:  # variants models.yaml does not list, named explicitly
        targets = [(args.runtime, v) for v in args.variant]
    if not targets:
        raise EmbenchError(
            f"models.yaml lists no variant {', '.join(args.variant or [])} of {args.model} "
            f"for {'the ' + args.runtime + ' runtime' if args.runtime else 'any runtime'}"
        )
    prepared = prepare_targets(
        config, args.model, targets, cache_root=args.cache_dir, force=args.force
    )
    rows = [
        {
            "model": p.model_id,
            "runtime": p.runtime,
            "variant": p.variant,
            "cache": "hit" if p.cache_hit else "built",
            "cache_hit": p.cache_hit,
            "seconds": round(p.seconds, 3),
            "path": str(p.directory),
            "manifest_sha256": p.manifest_sha256,
            "model_bytes": p.manifest.model_bytes,
            "parity": p.manifest.parity.model_dump(),
        }
        for p in prepared
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"{args.model}: prepared variants (cosine vs PyTorch reference)")
    for column in (
        "runtime",
        "variant",
        "cache",
        "mean cos",
        "min cos",
        "gate mean/min",
        "MB",
        "s",
    ):
        table.add_column(column, no_wrap=True)
    for row in rows:
        parity = row["parity"]
        table.add_row(
            row["runtime"],
            row["variant"],
            row["cache"],
            f"{parity['mean_cosine']:.6f}",
            f"{parity['min_cosine']:.6f}",
            f"{parity['gate_mean']}/{parity['gate_min']}",
            f"{row['model_bytes'] / 1e6:.1f}",
            f"{row['seconds']:.2f}",
        )
    stdout.print(table)
    for row in rows:
        stdout.print(
            f"{row['runtime']}/{row['variant']}: {row['path']}", highlight=False, soft_wrap=True
        )
    return 0


def _cmd_host_pools(args: argparse.Namespace) -> int:
    from embench.host_slots import pool_definitions

    print(json.dumps(pool_definitions(load_config(args.config_dir).benchmark.host), indent=2))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    summary = {
        "config_dir": str(config.config_dir),
        "models": {
            mid: {runtime: list(variants) for runtime, variants in m.runtimes.items()}
            for mid, m in config.models.items()
        },
        "benchmark_models": config.benchmark.models,
        "scenarios": [s.name for s in config.benchmark.scenarios],
        "external": {e.name: {"model": e.model, "url": e.url} for e in config.benchmark.external},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        stdout.print(f"config OK: {config.config_dir}", highlight=False)
        for model_id, runtimes in summary["models"].items():
            listed = "; ".join(f"{r}: {', '.join(v)}" for r, v in runtimes.items())
            stdout.print(f"  model {model_id}: {listed}", highlight=False)
        for name, external in summary["external"].items():
            stdout.print(
                f"  external {name}: {external['model']} at {external['url']}", highlight=False
            )
        stdout.print(f"  scenarios: {', '.join(summary['scenarios'])}", highlight=False)
    return 0
