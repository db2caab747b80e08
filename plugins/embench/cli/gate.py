"""`embench ab` (an A/B comparison run on this machine, the embedding_ab DAG through
dag.test) and `embench trigger` (a DAG run through Airflow's REST API, as a pipeline gate).
Both print the verdicts and exit 0 (passed), 1 (the candidate is slower, or a regression),
2 (bad input) or 3 (the run failed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from embench import trigger
from embench.cli.options import add_launcher, add_selection, selection_conf
from embench.console import stdout as console
from embench.errors import ConfigError

AB_DAG_ID = "embedding_ab"


def add_commands(commands: Any) -> None:
    from embench import ab

    ab_parser = commands.add_parser(
        "ab",
        help="a candidate against a baseline, interleaved on this machine",
        description=ab.__doc__.split("\n\n")[0],
    )
    add_ab_options(ab_parser)
    ab_parser.set_defaults(handler=cmd_ab)

    gate = commands.add_parser(
        "trigger",
        help="a DAG run through Airflow's REST API, as a pipeline gate",
        description=trigger.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gate.add_argument("--url", help="Airflow's API server (default: $EMBENCH_AIRFLOW_URL)")
    gate.add_argument(
        "--dag", default=trigger.DAG_ID, help=f"{trigger.DAG_ID} (default) or {AB_DAG_ID}"
    )
    gate.add_argument("--conf", help="the run's params as JSON (merged under the options)")
    add_selection(gate.add_argument_group(f"the run's selection ({trigger.DAG_ID})"))
    add_ab_options(gate.add_argument_group(f"A/B ({AB_DAG_ID})"))
    gate.add_argument("--timeout", type=float, default=3600, help="seconds to wait (3600)")
    gate.add_argument("--poll", type=float, default=5.0, help="seconds between polls (5)")
    gate.add_argument("--note", help="a note on the run (e.g. the pipeline's build URL)")
    gate.set_defaults(handler=cmd_trigger)


def _side(value: str, image: str | None, settings: list[str]) -> dict[str, Any]:
    runtime, _, variant = value.partition("/")
    if not variant:
        raise ConfigError(f"expected RUNTIME/VARIANT (e.g. onnx/int8), got {value!r}")
    side: dict[str, Any] = {"runtime": runtime, "variant": variant, "settings": {}}
    if image:
        side["image"] = image
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE for a server setting, got {item!r}")
        try:
            side["settings"][key] = json.loads(raw)
        except json.JSONDecodeError:
            side["settings"][key] = raw
    return side


def ab_conf(args: argparse.Namespace) -> dict[str, Any]:
    """The A/B params the options give (a side only where an option names it)."""
    conf: dict[str, Any] = {}
    for name in ("baseline", "candidate"):
        pair, image, settings = (getattr(args, f"{name}{k}") for k in ("", "_image", "_setting"))
        if pair or image or settings:
            conf[name] = _side(pair or "onnx/fp32", image, settings)
    for key in ("model", "slices", "slice_s", "concurrency", "precision", "launcher"):
        if getattr(args, key) is not None:
            conf[key] = getattr(args, key)
    return conf


def add_ab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model id (default: benchmark.yaml's first)")
    parser.add_argument("--baseline", help="RUNTIME/VARIANT (onnx/fp32)")
    parser.add_argument("--candidate", help="RUNTIME/VARIANT (embench ab: onnx/int8)")
    parser.add_argument("--baseline-image", help="a server image for the baseline")
    parser.add_argument("--candidate-image", help="a server image for the candidate")
    for side in ("baseline", "candidate"):
        parser.add_argument(
            f"--{side}-setting",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a server setting of the {side} (e.g. workers=2)",
        )
    parser.add_argument("--slices", type=int, help="interleaved pairs of slices (8)")
    parser.add_argument("--slice-s", type=float, help="measured seconds a slice (5)")
    parser.add_argument("--concurrency", type=int, help="closed-loop requests in flight (16)")
    parser.add_argument("--precision", type=float, help="relative change that counts (0.05)")
    add_launcher(parser)


def cmd_ab(args: argparse.Namespace) -> int:
    from embench import ab
    from embench.config import load_config
    from embench.local_run import airflow_environment, prepare_airflow, run_dag
    from embench.steps import RunContext

    config = load_config()
    conf = ab_conf(args)
    conf.setdefault("model", config.benchmark.models[0])
    conf.setdefault("candidate", _side("onnx/int8", None, []))  # the known answer: faster
    ab.parse_ab(conf, config)  # bad input named (exit 2) before Airflow starts
    env = airflow_environment()
    os.environ.update(env)  # before Airflow is imported
    started = time.monotonic()
    prepare_airflow(env)
    state, run_id = run_dag(conf, AB_DAG_ID)
    run_dir = RunContext(AB_DAG_ID, run_id).run_dir()
    record_path = run_dir / "ab" / "ab.json"
    if not state.endswith("success") or not record_path.is_file():
        console.print(f"{AB_DAG_ID} {run_id}: {state}; no comparison", highlight=False)
        return trigger.EXIT_FAILED
    record = json.loads(record_path.read_text())
    verdicts = ab.compare(record, ab.parse_ab(conf, config).precision)
    console.print(
        f"{AB_DAG_ID} {run_id}: {state} in {time.monotonic() - started:.0f} s\n"
        f"{record['model']}: candidate {record['candidate']} vs baseline {record['baseline']}",
        highlight=False,
    )
    for row in ab.table(verdicts):
        console.print(row, highlight=False)
    console.print(f"report: {run_dir / 'ab' / 'ab.md'}", highlight=False, soft_wrap=True)
    slower = any(v["verdict"] == "slower" for v in verdicts)
    return trigger.EXIT_REGRESSED if slower else trigger.EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    try:
        conf = json.loads(args.conf) if args.conf else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--conf is not JSON: {exc}") from None
    if args.dag == AB_DAG_ID:
        conf.update(ab_conf(args))
    else:
        conf.update(selection_conf(args))
        conf.setdefault("fail_on_regression", False)  # the gate reads the verdicts itself
    api = trigger.AirflowApi.from_env(args.url)
    try:
        run_id = api.trigger(args.dag, conf, args.note)
        console.print(f"triggered {args.dag} {run_id} at {api.base_url}", highlight=False)
        state = trigger.wait_for_run(
            api,
            args.dag,
            run_id,
            timeout_s=args.timeout,
            poll_s=args.poll,
            on_progress=_changes_only(lambda p: console.print(p.line(), highlight=False)),
        )
        result = trigger.collect(api, args.dag, run_id, state)
    except trigger.GateError as exc:
        print(f"embench trigger: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        api.close()
    for line in trigger.describe(result):
        console.print(line, highlight=False)
    return result.exit_code


def _changes_only(show: Callable[[trigger.Progress], None]) -> Callable[[trigger.Progress], None]:
    """A progress line when what runs changes (or a minute went by), not one per poll."""
    last: list[tuple[Any, ...]] = []

    def on_progress(progress: trigger.Progress) -> None:
        key = (progress.state, progress.done, progress.failed, tuple(sorted(progress.running)))
        minute = int(progress.elapsed_s // 60)
        if not last or last[0] != (key, minute):
            last[:] = [(key, minute)]
            show(progress)

    return on_progress
