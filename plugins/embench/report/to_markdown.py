"""The report in Markdown (logs, pull requests): the comparison table with the regression
marks, then each section of the HTML report in the same order as text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embench.cost import PRICE_LABEL
from embench.host_slots import SLOT_LABEL
from embench.report.cost import CostRanking
from embench.report.data import ReportData
from embench.report.runtimes import ModelComparison
from embench.report.text import (
    COLD_START_ABSENT,
    COLUMNS,
    PEAK_COLUMNS,
    cell,
    entry_cells,
    figure,
    parity_text,
    peer_sentence,
    rate_text,
    usd_text,
    who_text,
)


def _md(value: Any) -> str:
    """A value made safe for a Markdown table cell (pipes, newlines, HTML)."""
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text.replace("<", "&lt;")  # no raw HTML where Markdown is rendered


def _marked(text: str, status: str | None) -> str:
    return f"**{text}** ({status})" if status in ("regressed", "improved") else text


def markdown(data: ReportData) -> str:
    """The Markdown report of `data` (from `collect`)."""
    rows = data.rows
    lines = [f"# {_md(data.title)}", "", *_not_measured(data.not_measured)]
    if not rows:
        return "\n".join([*lines, "No results were stored for this run.", ""])
    for model in sorted({str(r["model"]) for r in rows}):
        lines += [f"## {_md(model)}", ""]
        lines.append("| " + " | ".join(label for _, label in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for row in (r for r in rows if str(r["model"]) == model):
            marks = row.get("verdicts") or {}
            cells = [_md(_marked(figure(row, k), marks.get(k))) for k, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    peaks = [r for r in rows if r.get("search_over")]
    if peaks:
        lines += _peaks(peaks)
    lines += _runtimes(data.comparison)
    lines += _cost(data.cost, data.runs)
    lines += _tuning(data.tuning)
    lines += _details(data)
    lines += _verdicts(data.verdicts)
    return "\n".join([*lines, ""])


def write_markdown(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- sections


def _not_measured(missing: list[dict[str, Any]]) -> list[str]:
    """Planned targets with no stored result (nothing when every target was stored)."""
    if not missing:
        return []
    lines = ["## Not measured", "", "| target | rep | host slot | why |", "|---|---|---|---|"]
    for item in missing:
        where = str(item[SLOT_LABEL])
        if item.get("instance_type"):
            where += f" ({item['instance_type']})"
        lines.append(
            f"| {_md(item['target'])} | {item['repetition']} | {_md(where)} | "
            f"{_md(item['reason'])} |"
        )
    return [*lines, ""]


def _peaks(peaks: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["## Peak throughput under the latency SLO", ""]
    lines.append("| model | " + " | ".join(label for _, label in PEAK_COLUMNS) + " |")
    lines.append("|---|" + "---|" * len(PEAK_COLUMNS))
    for row in peaks:
        cells = [_md(row["model"]), *(_md(figure(row, k)) for k, _ in PEAK_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _runtimes(comparisons: Sequence[ModelComparison]) -> list[str]:
    """The "Runtimes compared" section (nothing with one target per model only)."""
    shown = [c for c in comparisons if len(c.entries) > 1]
    if not shown:
        return []
    lines = ["## Runtimes compared", ""]
    for comparison in shown:
        if comparison.reference:
            note = f"each figure, then its ratio to {comparison.reference} measured in this run"
        else:
            note = "PyTorch fp32 was not measured in this run: no ratios"
        lines += [f"### {_md(comparison.title)} ({note})", ""]
        labels = [m.label for m in comparison.measures]
        lines.append("| runtime | variant | " + " | ".join(labels) + " |")
        lines.append("|---|---|" + "---|" * len(labels))
        for entry in comparison.entries:
            who = f"| {_md(entry.runtime)} | {_md(entry.variant)} | "
            lines.append(who + " | ".join(entry_cells(comparison, entry)) + " |")
        lines.append("")
        if sentence := peer_sentence(comparison, _md):
            lines += [sentence, ""]
    return lines


def _cost(rankings: Sequence[CostRanking], runs: Sequence[dict[str, Any]]) -> list[str]:
    """The "Cost per million embeddings" section (nothing without results)."""
    if not rankings:
        return []
    lines = ["## Cost per million embeddings", ""]
    if not any(r.ranked for r in rankings):
        hints = sorted({e.how_to_price or "" for r in rankings for e in r.unpriced} - {""})
        return [
            *lines,
            "No price: none of these results' hosts has a price per hour, so no cost is "
            f"computed ({'; '.join(_md(h) for h in hints)}).",
            "",
        ]
    lines += [
        "Configurations ranked by what a million embeddings cost at their measured "
        "throughput (texts/s; repetitions pooled by median), at the price per hour each "
        "result was measured at: price / (texts/s x 3600) x 1e6.",
        "",
    ]
    for ranking in rankings:
        lines += [f"### {_md(ranking.model)} {_md(ranking.scenario)}", ""]
        peak = ["$/M at peak under SLO"] if ranking.search else []
        header = ["rank", "configuration", "texts/s", "$/hour", "$/M embeddings", *peak]
        lines.append("| " + " | ".join([*header, "price source"]) + " |")
        lines.append("|" + "---|" * (len(header) + 1))
        for index, entry in enumerate(ranking.ranked, 1):
            cells = [
                str(index),
                _md(entry.target),
                rate_text(entry.texts_per_s),
                usd_text(entry.usd_per_hour),
                usd_text(entry.usd_per_million),
                *([usd_text(entry.usd_per_million_at_peak)] if ranking.search else []),
                _md(entry.price_source or "-"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for entry in ranking.unpriced:
            cells = [
                "-",
                _md(entry.target),
                rate_text(entry.texts_per_s),
                "no price",
                "-",
                *(["-"] if ranking.search else []),
                _md(entry.how_to_price or "-"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if ranking.invalid:
            lines.append("")
            lines.append(f"{ranking.invalid} invalid result(s) left out.")
        lines.append("")
    priced = [run for run in runs if run.get(PRICE_LABEL) is not None]
    if priced:
        lines += ["### What the benchmark cost", ""]
        lines.append("| run | $/hour | wall time s | cost $ |")
        lines.append("|---|---|---|---|")
        for run in priced:
            who = "/".join(str(run[k]) for k in ("model", "variant", "runtime") if run.get(k))
            lines.append(
                f"| {_md(who)} | {usd_text(run.get(PRICE_LABEL))} | "
                f"{rate_text(run.get('wall_s'))} | {usd_text(run.get('run_usd'))} |"
            )
        total = sum(run.get("run_usd") or 0.0 for run in priced)
        lines += [
            "",
            f"Total: ${usd_text(total)} for {len(priced)} priced run(s) (the client's "
            "wall time: warm-ups and measurements, not the host's start or model "
            "preparation).",
            "",
        ]
    return lines


def _number(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _tuning(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The "Tuned per host" section (nothing when no target was tuned)."""
    if not rows:
        return []
    lines = [
        "## Tuned per host",
        "",
        "The server's settings searched on this host before measuring (cached per host "
        "fingerprint); a setting replaces the default only when it wins every interleaved "
        "re-measurement by more than the margin (docs/methodology.md).",
        "",
        "| model | runtime | variant | default QPS | tuned QPS | ratio | chosen | "
        "candidates | cache |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cache = f"hit ({row['measured_at']})" if row["cache_hit"] else "measured"
        cells = [
            _md(row["model"]),
            _md(row["runtime"]),
            _md(row["variant"]),
            _number(row["default_qps"]),
            _number(row["tuned_qps"]),
            _number(row["ratio"], 3),
            _md(row["chosen"]),
            str(row["candidates"]),
            _md(cache),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _details(data: ReportData) -> list[str]:
    """Model load and cold start, validity warnings, the environment."""
    lines = ["## Model load and cold start", ""]
    lines.append("| run | load ms | cold start s | parity (mean / min cosine) |")
    lines.append("|---|---|---|---|")
    for run in data.runs:
        parity = run.get("parity") or {}
        lines.append(
            f"| {_md(who_text(run))} | {cell('model_load_ms', run.get('model_load_ms'))} | "
            f"{cell('cold_start_s', run.get('cold_start_s'))} | "
            f"{_md(parity_text(parity))} |"
        )
    if data.runs and all(run.get("cold_start_s") is None for run in data.runs):
        lines += ["", f"Cold start: {COLD_START_ABSENT}."]
    lines += ["", "## Validity warnings", ""]
    if not data.warnings:
        lines.append("None: every scenario is valid and stable.")
    for warning in data.warnings:
        where = f"{warning['who']} {warning['scenario'] or ''}".strip()
        lines.append(
            f"- {_md(warning['severity'])} `{_md(warning['code'])}`"
            f"{' ' + _md(where) if where else ''}: {_md(warning['message'])}"
        )
    lines += ["", "## Environment", ""]
    for env in data.environments:
        lines.append(
            f"- {_md(env.get('hostname'))}: {_md(env.get('cpu_model'))}, "
            f"{_md(env.get('cpu_count_logical'))} logical CPUs, "
            f"{_md(round((env.get('memory_total_bytes') or 0) / 2**30, 1))} GiB, "
            f"{_md(env.get('os'))} {_md(env.get('kernel'))} {_md(env.get('arch'))}, "
            f"Python {_md(env.get('python'))}; hardware key `{_md(env.get('hardware_key'))}`"
        )
        libraries = env.get("libraries") or {}
        if libraries:
            lines.append(
                "  - libraries: " + ", ".join(f"{_md(k)} {_md(v)}" for k, v in libraries.items())
            )
    return [*lines, ""]


def _verdicts(verdicts: Sequence[dict[str, Any]]) -> list[str]:
    flagged = [v for v in verdicts if v["status"] in ("regressed", "improved")]
    lines = ["## Regression verdicts", ""]
    if not flagged:
        judged = sum(1 for v in verdicts if v["status"] != "no_baseline")
        lines.append(
            f"No regression or improvement ({judged} judged, "
            f"{len(verdicts) - judged} without a baseline yet)."
        )
    for verdict in flagged:
        who = "/".join(str(verdict[k]) for k in ("model", "variant", "runtime") if verdict.get(k))
        lines.append(
            f"- **{verdict['status'].upper()}** {_md(who + ' ' if who else '')}"
            f"{_md(verdict.get('scenario', ''))} "
            f"{_md(verdict['metric'])}: {_md(verdict['reason'])}"
        )
    return lines
