"""The store's `embench` subcommands: ingest, history, compare, runs, latest, baseline,
export. Each is a thin wrapper over embench.store (queries, marks); `--json` prints what the
library returns."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table
from sqlalchemy.engine import Engine

from embench.cli.options import add_run_filters, add_store_options, add_target, iso_time
from embench.console import stdout
from embench.errors import EmbenchError
from embench.store.limits import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    RUNS_LIMIT_DEFAULT,
    RUNS_LIMIT_MAX,
    Page,
    parse_limit,
)


def add_commands(commands: Any) -> None:
    """Register the store subcommands on the `embench` subparsers object."""
    ingest = commands.add_parser("ingest", help="store result JSON files (idempotent)")
    ingest.add_argument("paths", nargs="+", type=Path, help="result files or folders of them")
    ingest.add_argument("--no-detect", action="store_true", help="store without judging")
    add_store_options(ingest)
    ingest.set_defaults(handler=cmd_ingest)

    history = commands.add_parser("history", help="a metric over time")
    add_target(history, model_required=True)
    history.add_argument("--scenario")
    history.add_argument("--key", help="restrict to one comparability key")
    history.add_argument("--metric", default="p99_ms")
    history.add_argument("--since", type=iso_time, help="ISO date or time (UTC)")
    history.add_argument("--until", type=iso_time)
    history.add_argument(
        "--limit",
        type=_limit(HISTORY_LIMIT_MAX),
        default=HISTORY_LIMIT_DEFAULT,
        help=f"the newest N points (default {HISTORY_LIMIT_DEFAULT}, at most {HISTORY_LIMIT_MAX})",
    )
    add_store_options(history)
    history.set_defaults(handler=cmd_history)

    compare = commands.add_parser("compare", help="two runs side by side with deltas")
    compare.add_argument("run_a", help="ingest key, run_id or run number")
    compare.add_argument("run_b")
    add_store_options(compare)
    compare.set_defaults(handler=cmd_compare)

    runs = commands.add_parser("runs", help="list stored runs")
    add_run_filters(runs)
    runs.add_argument(
        "--limit",
        type=_limit(RUNS_LIMIT_MAX),
        default=RUNS_LIMIT_DEFAULT,
        help=f"the newest N runs (default {RUNS_LIMIT_DEFAULT}, at most {RUNS_LIMIT_MAX})",
    )
    add_store_options(runs)
    runs.set_defaults(handler=cmd_runs)

    latest = commands.add_parser("latest", help="comparison table of the newest runs")
    latest.add_argument("--model")
    add_store_options(latest)
    latest.set_defaults(handler=cmd_latest)

    baseline = commands.add_parser(
        "baseline", help="mark a deliberate change: earlier nights are no baseline"
    )
    actions = baseline.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    mark = actions.add_parser(
        "mark",
        help="nights before now (or --at) are no baseline for these results",
        description=(
            "Record a deliberate change. The detector ignores the history before the mark "
            "for the results it names; the first nights after it are compared with the "
            "nights before it (an upgrade verdict) unless --no-compare."
        ),
    )
    add_target(
        mark,
        model_required=True,
        variant_help="default: every variant",
        runtime_help="default: every runtime",
    )
    mark.add_argument("--scenario", help="default: every scenario")
    mark.add_argument("--reason", required=True, help="what changed, and why")
    mark.add_argument("--at", type=iso_time, help="ISO date or time (UTC) the change took effect")
    mark.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="do not compare the nights after the mark with those before",
    )
    add_store_options(mark)
    mark.set_defaults(handler=cmd_baseline_mark)
    marks = actions.add_parser("list", help="the baseline marks, newest first")
    marks.add_argument("--model")
    add_store_options(marks)
    marks.set_defaults(handler=cmd_baseline_list)
    remove = actions.add_parser("remove", help="delete a baseline mark made by mistake")
    remove.add_argument("id", type=int)
    add_store_options(remove)
    remove.set_defaults(handler=cmd_baseline_remove)

    export = commands.add_parser("export", help="scenario results as CSV")
    add_run_filters(export)
    export.add_argument("--output", "-o", type=Path, help="CSV file (default: stdout)")
    add_store_options(export)
    export.set_defaults(handler=cmd_export)


def _limit(maximum: int) -> Any:
    def parse(value: str) -> int:
        try:
            return parse_limit(value, maximum)
        except EmbenchError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("limit: ")) from exc

    return parse


def _note_truncated(page: Page, what: str, narrow: str) -> None:
    """Say on stderr (stdout stays the rows, JSON or a table) that older rows were left off."""
    if page.truncated:
        print(
            f"embench: the newest {page.limit} {what} shown; older ones were left off "
            f"(raise --limit or narrow {narrow})",
            file=sys.stderr,
        )


def _engine(args: argparse.Namespace) -> Engine:
    from embench.store.db import make_engine, upgrade_to_head

    engine = make_engine(args.db_url)
    upgrade_to_head(engine)
    return engine


def _run_filter(args: argparse.Namespace) -> Any:
    from embench.store.queries import RunFilter

    return RunFilter(args.model, args.variant, args.runtime, args.status, args.since, args.until)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _show(
    args: argparse.Namespace, rows: list[dict[str, Any]], title: str, columns: list[str]
) -> None:
    """The rows as JSON (`--json`) or as a table of `columns`."""
    if args.json:
        _print_json(rows)
    else:
        _table(title, rows, columns)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    stdout.print(table)


def cmd_ingest(args: argparse.Namespace) -> int:
    from embench.config import load_config
    from embench.store.detect import settings_from_config
    from embench.store.ingest import ingest_paths

    detector, metrics, on_regression = None, [], "warn"
    if not args.no_detect:
        regression = load_config(args.config_dir).benchmark.regression
        detector, metrics = settings_from_config(regression), regression.metrics
        on_regression = regression.on_regression
    reports = ingest_paths(_engine(args), args.paths, detector=detector, metrics=metrics)
    regressed = [v for r in reports for v in r.regressed]
    if args.json:
        _print_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            action = "replaced" if r.replaced else "stored"
            stdout.print(
                f"{action} {r.ingest_key}: {r.scenarios} scenario(s) from {r.source_path}",
                highlight=False,
            )
        for v in regressed:
            stdout.print(f"REGRESSED {v['metric']} {v['reason']}", highlight=False)
        for v in (v for r in reports for v in r.verdicts if v["status"] == "explained"):
            stdout.print(f"EXPLAINED {v['metric']} {v['reason']}", highlight=False)
    if regressed and on_regression == "fail":
        print(f"embench: {len(regressed)} regression(s)", file=sys.stderr)
        return 3
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.queries import recent_history

    with session_scope(_engine(args)) as session:
        page = recent_history(
            session,
            args.metric,
            model=args.model,
            variant=args.variant,
            scenario=args.scenario,
            runtime=args.runtime,
            comparability_key=args.key,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    columns = ["time", "value", "variant", "runtime", "scenario", "valid", "verdict", "run_id"]
    _show(args, page.rows, f"{args.model}: {args.metric}", columns)
    _note_truncated(page, "points", "--since/--until")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.queries import compare_runs

    with session_scope(_engine(args)) as session:
        result = compare_runs(session, args.run_a, args.run_b)
    if args.json:
        _print_json(result)
        return 0
    rows = [
        {"scenario": s["scenario"], **m, "relative": _pct(m["relative"])}
        for s in result["scenarios"]
        for m in s["metrics"]
    ]
    title = f"A {result['a']['doc_run_id']}  vs  B {result['b']['doc_run_id']}"
    _table(title, rows, ["scenario", "metric", "a", "b", "delta", "relative"])
    return 0


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:+.1%}"


def cmd_runs(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.queries import recent_runs

    with session_scope(_engine(args)) as session:
        page = recent_runs(session, _run_filter(args), limit=args.limit)
    columns = ["started_at", "doc_run_id", "model", "variant", "runtime", "status"]
    _show(args, page.rows, "runs", [*columns, "scenarios", "regressions"])
    _note_truncated(page, "runs", "the filters")
    return 0


def cmd_latest(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.queries import COMPARISON_METRICS, latest_comparison

    with session_scope(_engine(args)) as session:
        rows = latest_comparison(session, args.model)
    columns = ["model", "variant", "runtime", "scenario", *COMPARISON_METRICS]
    # usd_per_million: $ per million embeddings at the row's texts/s (priced runs: embench.cost)
    _show(args, rows, "latest runs", [*columns, "model_load_ms", "usd_per_million"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.queries import export_csv

    with session_scope(_engine(args)) as session:
        if args.output is None:
            count = export_csv(session, sys.stdout, _run_filter(args))
        else:
            try:
                with args.output.open("w", newline="") as out:
                    count = export_csv(session, out, _run_filter(args))
            except OSError as exc:
                raise EmbenchError(f"{args.output}: cannot write: {exc.strerror}") from exc
    summary = json.dumps({"rows": count, "output": str(args.output or "-")})
    if args.output is not None:
        print(summary if args.json else f"{count} row(s) written to {args.output}")
    return 0


MARK_COLUMNS = ["id", "marked_at", "model", "variant", "runtime", "scenario", "compare", "reason"]


def cmd_baseline_mark(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.marks import add_mark

    with session_scope(_engine(args)) as session:
        mark = add_mark(
            session,
            model=args.model,
            variant=args.variant,
            runtime=args.runtime,
            scenario=args.scenario,
            reason=args.reason,
            marked_at=args.at,
            compare=args.compare,
        )
    if args.json:
        _print_json(mark)
    else:
        stdout.print(
            f"baseline mark #{mark['id']} from {mark['marked_at']}: {mark['reason']}",
            highlight=False,
        )
    return 0


def cmd_baseline_list(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.marks import list_marks

    with session_scope(_engine(args)) as session:
        marks = list_marks(session, args.model)
    _show(args, marks, "baseline marks", MARK_COLUMNS)
    return 0


def cmd_baseline_remove(args: argparse.Namespace) -> int:
    from embench.store.db import session_scope
    from embench.store.marks import remove_mark

    with session_scope(_engine(args)) as session:
        mark = remove_mark(session, args.id)
    if args.json:
        _print_json(mark)
    else:
        stdout.print(f"removed baseline mark #{mark['id']}: {mark['reason']}", highlight=False)
    return 0
