"""Command line: `python -m client run|schema`.

    python -m client run --url http://127.0.0.1:8000 --out result.json \\
        --scenarios mode=closed,concurrency=1/4/16 mode=open,rate=50,arrival=constant
    python -m client run --url URL --scenario-file scenarios.json --out result.json
    python -m client schema            # JSON Schema of the result document
    python -m client fingerprint       # this machine's environment fingerprint (JSON)

Scenario specs are comma-separated key=value pairs with the field names of benchmark.yaml's
scenarios (name, mode, concurrency, rate, arrival, min_requests, min_duration_s,
max_duration_s, texts_per_request, length_bucket); `concurrency=1/4/16` (or `rate=...`)
expands into a sweep. `--set KEY=VALUE` gives defaults to every --scenarios spec. A search
for the peak load under a p99 SLO takes `search.` keys instead of the rate or concurrency:
    mode=open,search.over=rate,search.slo_p99_ms=50,search.low=10,search.high=400
(also search.max_error_rate, search.precision, search.max_probes; over=concurrency with
mode=closed).

Exit status: 0 run complete (see each scenario's `valid`), 2 bad arguments or scenario file,
3 server not ready within --wait-timeout, 4 server went away during the run, 5 run complete
but a scenario invalid (only with --fail-on-invalid), 130 interrupted (partial result
written), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from client.result import json_schema
from client.runner import Interrupted, RunRequest, run_benchmark
from client.scenario import (
    DEFAULT_TIMING_HEADERS,
    ClientOptions,
    RunLabels,
    ScenarioFile,
    ScenarioParams,
    ScenarioSpecError,
    StabilityParams,
    WarmupParams,
    format_validation_error,
    parse_scenario_spec,
)
from client.target import ServerUnreachable
from client.workload import TokenCounter

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SERVER_GONE, EXIT_INVALID = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    pass


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Load generator for text-embedding servers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run scenarios against a server and write a result file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    run.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    run.add_argument("--out", required=True, type=Path, help="result JSON path (atomic writes)")
    run.add_argument("--scenarios", nargs="+", metavar="SPEC", help="scenario specs (see below)")
    run.add_argument(
        "--scenario-file", type=Path, help="JSON: scenarios, warmup, stability, options, metadata"
    )
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="default for every --scenarios spec"
    )
    g = run.add_argument_group("warm-up and stability (override the scenario file)")
    g.add_argument("--warmup-requests", type=int)
    g.add_argument("--warmup-duration", type=float, metavar="S")
    g.add_argument("--window", type=float, metavar="S", help="shortest stability window")
    g.add_argument(
        "--window-requests", type=int, metavar="N", help="requests a window should hold (135)"
    )
    g.add_argument("--windows", type=int, help="last N windows that must agree")
    g.add_argument("--tolerance", type=float, help="relative tolerance, e.g. 0.1")
    g.add_argument(
        "--extend-until-stable",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check at every window boundary until stable (default: yes)",
    )
    g.add_argument("--max-trials", type=int)
    r = run.add_argument_group("requests")
    r.add_argument("--endpoint", choices=["embed", "openai"])
    r.add_argument("--text-mode", choices=["unique", "repeat"])
    r.add_argument("--repeat-pool", type=int, help="repeat mode: distinct requests cycled")
    r.add_argument("--seed", type=int)
    r.add_argument("--timeout", type=float, metavar="S", help="per-request timeout")
    r.add_argument("--max-connections", type=int, help="open loop: connections at most")
    r.add_argument(
        "--schedule-lag-limit",
        type=float,
        metavar="MS",
        help="open loop: a p99 schedule lag beyond this, or a dropped arrival, invalidates (100)",
    )
    r.add_argument("--error-threshold", type=float, help="error rate that invalidates (0.01)")
    r.add_argument(
        "--timing-header",
        action="append",
        metavar="NAME=HEADER",
        help=f"server timing header names (defaults: {DEFAULT_TIMING_HEADERS}); "
        "NAME=  (empty) disables one",
    )
    r.add_argument("--tokenizer", help="tokenizer.json for exact token counts (optional)")
    s = run.add_argument_group("server")
    s.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="readiness wait (60)"
    )
    s.add_argument("--container", help="sample this Docker container's CPU and memory")
    s.add_argument("--docker-url", help="Docker engine URL (default: environment)")
    s.add_argument("--server-pid", type=int, help="sample this local process (psutil)")
    s.add_argument("--sample-interval", type=float, metavar="S")
    m = run.add_argument_group("labels (default: the server's /info)")
    for name in ("model", "variant", "runtime", "git-sha", "image", "image-digest"):
        m.add_argument(f"--{name}")
    m.add_argument("--label", action="append", metavar="KEY=VALUE")
    o = run.add_argument_group("output")
    o.add_argument("--progress", choices=["auto", "rich", "plain", "none"], default="auto")
    o.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    o.add_argument("--fail-on-invalid", action="store_true")
    sub.add_parser("schema", help="print the result document's JSON Schema")
    sub.add_parser(
        "fingerprint",
        help="print this machine's environment fingerprint (JSON; hardware_key keys results)",
    )
    return parser


def _load_file(path: Path) -> ScenarioFile:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read scenario file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"scenario file {path} is not JSON: {exc}") from exc
    try:
        return ScenarioFile.model_validate(doc)
    except ValidationError as exc:
        raise UsageError(f"scenario file {path}: {format_validation_error(exc)}") from exc


def _override(model: Any, cls: type, values: dict[str, Any], what: str) -> Any:
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return model
    try:
        return cls.model_validate({**model.model_dump(), **values})
    except ValidationError as exc:
        raise UsageError(f"invalid {what}: {format_validation_error(exc)}") from exc


def build_request(args: argparse.Namespace) -> RunRequest:
    file = _load_file(args.scenario_file) if args.scenario_file else None
    scenarios: list[ScenarioParams] = list(file.scenarios) if file else []
    defaults = _pairs(args.set, "--set")
    for spec in args.scenarios or []:
        scenarios.extend(parse_scenario_spec(spec, defaults))
    if not scenarios:
        raise UsageError("no scenarios: give --scenarios SPEC... or --scenario-file FILE")
    names = [s.name for s in scenarios]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"scenario names must be unique; repeated: {', '.join(repeated)}")

    warmup = _override(
        file.warmup if file else WarmupParams(),
        WarmupParams,
        {"requests": args.warmup_requests, "duration_s": args.warmup_duration},
        "warm-up",
    )
    stability = _override(
        file.stability if file else StabilityParams(),
        StabilityParams,
        {
            "window_s": args.window,
            "window_requests": args.window_requests,
            "windows": args.windows,
            "tolerance": args.tolerance,
            "extend_until_stable": args.extend_until_stable,
            "max_trials": args.max_trials,
        },
        "stability",
    )
    base_options = (file.options if file and file.options else None) or ClientOptions()
    if file and base_options.tokenizer and not Path(base_options.tokenizer).is_absolute():
        # a scenario file names its tokenizer beside itself (it travels with the file)
        tokenizer = str(args.scenario_file.parent / base_options.tokenizer)
        base_options = base_options.model_copy(update={"tokenizer": tokenizer})
    timing = None
    if args.timing_header:
        timing = dict(base_options.timing_headers)
        for name, header in _pairs(args.timing_header, "--timing-header").items():
            if header:
                timing[name] = header
            else:
                timing.pop(name, None)
    options = _override(
        base_options,
        ClientOptions,
        {
            "endpoint": args.endpoint,
            "text_mode": args.text_mode,
            "repeat_pool": args.repeat_pool,
            "seed": args.seed,
            "request_timeout_s": args.timeout,
            "max_connections": args.max_connections,
            "schedule_lag_limit_ms": args.schedule_lag_limit,
            "error_threshold": args.error_threshold,
            "timing_headers": timing,
            "sample_interval_s": args.sample_interval,
            "tokenizer": args.tokenizer,
        },
        "request options",
    )
    base_labels = (file.metadata if file and file.metadata else None) or RunLabels()
    extra_labels = _pairs(args.label, "--label")
    labels = _override(
        base_labels,
        RunLabels,
        {
            "model": args.model,
            "variant": args.variant,
            "runtime": args.runtime,
            "git_sha": args.git_sha,
            "image": args.image,
            "image_digest": args.image_digest,
            "labels": {**base_labels.labels, **extra_labels} if extra_labels else None,
        },
        "labels",
    )
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    if args.wait_timeout <= 0:
        raise UsageError("--wait-timeout must be positive")
    if options.tokenizer:
        TokenCounter(options.tokenizer)  # a missing file or package: a usage error, now
    return RunRequest(
        url=args.url,
        scenarios=scenarios,
        out=args.out,
        warmup=warmup,
        stability=stability,
        options=options,
        labels=labels,
        wait_timeout_s=args.wait_timeout,
        container=args.container,
        docker_url=args.docker_url,
        server_pid=args.server_pid,
        progress=args.progress,
        argv=list(sys.argv),
        fail_on_invalid=args.fail_on_invalid,
    )


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            if kind == "uvloop":
                raise UsageError("--loop uvloop: uvloop is not installed") from None
    return asyncio.new_event_loop()


async def _main_run(req: RunRequest) -> int:
    loop = asyncio.get_running_loop()
    interrupt = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        print(
            f"\n{sig.name}: stopping; writing partial results to {req.out} "
            "(again to abort at once)",
            file=sys.stderr,
            flush=True,
        )
        interrupt.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)  # a second signal takes the default action

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    result = await run_benchmark(req, interrupt)
    print(f"result: {req.out} ({result.status})", file=sys.stderr)
    if result.status == "failed":
        return EXIT_SERVER_GONE
    if result.status == "incomplete":
        return EXIT_INTERRUPTED
    return EXIT_INVALID if req.fail_on_invalid and not result.valid else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    if args.command == "fingerprint":
        from client.env import fingerprint

        print(fingerprint().model_dump_json())
        return EXIT_OK
    try:
        req = build_request(args)
        loop = _new_loop(args.loop)
    except (UsageError, ScenarioSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return loop.run_until_complete(_main_run(req))
    except ServerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        loop.close()
