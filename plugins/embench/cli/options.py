"""Options more than one `embench` subcommand takes, each defined once, and the argument
types they parse with."""

from __future__ import annotations

import argparse
from datetime import datetime

from embench.config import ALL_VARIANTS

DB_URL_HELP = "results database (default: EMBENCH_DB_URL or SQLite)"
STATUSES = ("complete", "incomplete", "failed")


def add_db_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-url", help=DB_URL_HELP)


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that reads or writes the results store."""
    add_db_url(parser)
    add_json(parser)


def add_target(
    parser: argparse.ArgumentParser,
    *,
    model_required: bool = False,
    variant_help: str | None = None,
    runtime_help: str | None = None,
) -> None:
    """--model, --variant, --runtime: which stored results a command is about."""
    parser.add_argument("--model", required=model_required)
    parser.add_argument("--variant", help=variant_help)
    parser.add_argument("--runtime", help=runtime_help)


def add_run_filters(parser: argparse.ArgumentParser) -> None:
    """The filters of a listing of stored runs."""
    add_target(parser)
    parser.add_argument("--status", choices=list(STATUSES))
    parser.add_argument("--since", type=iso_time, help="ISO date or time (UTC)")
    parser.add_argument("--until", type=iso_time)


def iso_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from exc


def name_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def variant_list(value: str) -> list[str]:
    variants = name_list(value)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(
            f"unknown variant {unknown[0] if unknown else value!r}; "
            f"expected a comma-separated list from: {', '.join(ALL_VARIANTS)}"
        )
    return variants


LAUNCHERS = ("auto", "docker", "process")
SELECTION = ("models", "runtimes", "variants", "scenarios")


def add_launcher(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--launcher", choices=LAUNCHERS)


def add_selection(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What a benchmark run measures: comma-separated filters of benchmark.yaml's matrix."""
    parser.add_argument(
        "--models", type=name_list, help="comma-separated model ids (default: benchmark.yaml)"
    )
    parser.add_argument(
        "--runtimes",
        type=name_list,
        help="comma-separated: onnx, torch, openvino (default: each model's)",
    )
    parser.add_argument(
        "--variants", type=name_list, help="comma-separated variants (default: each runtime's)"
    )
    parser.add_argument(
        "--scenarios", type=name_list, help="comma-separated scenario names (default: all)"
    )


def selection_conf(args: argparse.Namespace) -> dict[str, object]:
    """The DAG params the selection options (and --launcher) give."""
    conf: dict[str, object] = {k: getattr(args, k) for k in SELECTION if getattr(args, k, None)}
    if getattr(args, "launcher", None):
        conf["launcher"] = args.launcher
    return conf
