"""The report as one HTML page with Plotly charts (latency and QPS against concurrency)."""

from __future__ import annotations

from embench.report.data import ReportData
from embench.report.render import plotly_js, render
from embench.report.text import COLD_START_ABSENT, COLUMNS, PEAK_COLUMNS


def html(data: ReportData, plotly_src: str | None = None) -> str:
    """The HTML report: with `plotly_src` None, Plotly's script is inlined (a self-contained
    file); else the page loads it from that URL (the UI serves its bundled copy)."""
    return render(
        "report.html",
        data=data,
        columns=COLUMNS,
        peak_columns=PEAK_COLUMNS,
        cost=data.cost,
        cost_runs=data.priced_runs,
        comparison=data.compared,
        cold_start_absent=COLD_START_ABSENT,
        plotly_inline=plotly_js() if plotly_src is None else None,
        plotly_src=plotly_src,
        base="",
    )
