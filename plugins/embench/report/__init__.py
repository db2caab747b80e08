"""The per-run report: the seed's comparison table (variant x scenario -> QPS, latency
percentiles, server CPU and memory, model load time, parity) with the regression verdicts,
the runtimes compared, cost, tuning, cold-start times, the environment fingerprint and
validity warnings; as Markdown (logs, pull requests) and as one self-contained HTML file.

    data.py         what the report shows, read from the store once (`collect`)
    runtimes.py, cost.py, tuning.py   the view models of its sections
    text.py         how a figure reads (both formats)
    to_markdown.py, to_html.py (+ render.py, templates/)   the two formats

Used by `embench report`, the pipeline's report task and the UI (which imports from here;
nothing here imports the UI)."""

from __future__ import annotations

from pathlib import Path

from embench.report.data import (
    COLD_START_LABEL,
    TUNING_LABEL,
    ReportData,
    collect,
    resolve_ingest_keys,
)
from embench.report.text import COLUMNS, cell
from embench.report.to_html import html
from embench.report.to_markdown import markdown, write_markdown

__all__ = [
    "COLD_START_LABEL",
    "COLUMNS",
    "TUNING_LABEL",
    "ReportData",
    "cell",
    "collect",
    "html",
    "markdown",
    "resolve_ingest_keys",
    "write_markdown",
    "write_report",
]


def write_report(out_dir: Path, data: ReportData, stem: str = "report") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.html` under `out_dir`; returns both paths."""
    md_path = write_markdown(out_dir / f"{stem}.md", markdown(data))
    html_path = out_dir / f"{stem}.html"
    html_path.write_text(html(data), encoding="utf-8")
    return md_path, html_path
