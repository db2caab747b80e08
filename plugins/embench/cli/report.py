"""`embench report RUN`: a run's report, as Markdown and as one self-contained HTML file
(embench.report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from embench.cli.options import add_db_url, add_json


def add_commands(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="write a run's report (Markdown and self-contained HTML)"
    )
    report.add_argument(
        "run", help="ingest key, DAG run id (DAG_ID/RUN_ID or RUN_ID), run_id or run number"
    )
    report.add_argument(
        "--out-dir", type=Path, help="folder for report.md/.html (default: data dir)"
    )
    add_db_url(report)
    add_json(report, "print the paths as JSON")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    import re

    from embench.paths import data_dir
    from embench.report import collect, resolve_ingest_keys, write_report
    from embench.store.db import make_engine, session_scope, upgrade_to_head

    engine = make_engine(args.db_url)
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        keys, title = resolve_ingest_keys(session, args.run)
        data = collect(session, keys, title)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", args.run).strip("_") or "run"
    out_dir = args.out_dir or data_dir() / "reports" / safe
    md_path, html_path = write_report(out_dir, data)
    if args.json:
        print(json.dumps({"markdown": str(md_path), "html": str(html_path), "runs": keys}))
    else:
        print(f"report of {len(keys)} stored run(s): {md_path} and {html_path}")
    return 0
