"""The per-run report: the seed's comparison table (variant x scenario -> QPS, latency
percentiles, server CPU and memory, model load time, parity) with the regression verdicts,
cold-start times, the environment fingerprint and validity warnings; as Markdown (logs, pull
requests) and as one self-contained HTML file with Plotly charts (latency and QPS against
concurrency). `collect` reads everything from the store once; both formats render from it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from embench.cost import PRICE_LABEL, CostRanking, rank_by_cost, run_costs, usd_text
from embench.cost import markdown_section as cost_section
from embench.run_outcome import markdown_section as not_measured_section
from embench.runtime_comparison import (
    ModelComparison,
    compare_runtimes,
    markdown_section,
    ratio_text,
    value_text,
)
from embench.served_parity import parity_from_labels
from embench.store.detect import INTERVALS, resolve_run, stored_verdicts
from embench.store.ingest import utc
from embench.store.models import Environment, ModelArtifact, Run, ScenarioRow
from embench.store.queries import COMPARISON_METRICS, dag_run_ingest_keys, runs_comparison
from embench.tuning_report import markdown_section as tuning_section
from embench.tuning_report import tuning_record, tuning_rows

COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("runtime", "runtime"),
    ("scenario", "scenario"),
    ("qps", "QPS"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("p999_ms", "p99.9 ms"),
    ("server_cpu_pct_mean", "server CPU %"),
    ("server_rss_bytes_max", "RSS MB"),
    ("model_load_ms", "load ms"),
    ("parity_mean_cosine", "parity cos"),
    ("valid", "valid"),
)


def cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "server_rss_bytes_max":
        return f"{value / 1e6:.0f}"
    if key == "valid":
        return "yes" if value else "NO"
    if key == "parity_mean_cosine" and isinstance(value, float):
        return f"{value:.5f}"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def figure(row: dict[str, Any], key: str) -> str:
    """A figure with its interval when it has one ("152.3 [148.1-156.0]"); a percentile
    its sample count cannot support reads "n/a" (the notes say what it needs)."""
    value = row.get(key)
    if value is None and key.removesuffix("_ms") in (row.get("percentile_notes") or {}):
        return "n/a"
    text = cell(key, value)
    bounds = OWN_INTERVALS.get(key)
    if value is None or bounds is None:
        return text
    low, high = row.get(bounds[0]), row.get(bounds[1])
    if low is None or high is None:
        return text
    return f"{text} [{cell(key, low)}-{cell(key, high)}]"


def _marked(text: str, status: str | None) -> str:
    return f"**{text}** ({status})" if status in ("regressed", "improved") else text


def _md(value: Any) -> str:
    """A value made safe for a Markdown table cell (pipes, newlines, HTML)."""
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text.replace("<", "&lt;")  # no raw HTML where Markdown is rendered


def markdown(
    rows: Sequence[dict[str, Any]],
    verdicts: Sequence[dict[str, Any]],
    title: str,
    data: ReportData | None = None,
) -> str:
    """The Markdown summary; with `data` (from `collect`) also cold starts, the environment
    fingerprint and validity warnings."""
    lines = [f"# {_md(title)}", ""]
    if data is not None:
        lines += not_measured_section(data.not_measured, _md)
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
        lines += _markdown_peaks(peaks)
    if data is not None:
        lines += markdown_section(data.comparison, _md)
        lines += cost_section(data.cost, data.runs, _md)
        lines += tuning_section(data.tuning, _md)
    if data is not None:
        lines += _markdown_details(data)
    flagged = [v for v in verdicts if v["status"] in ("regressed", "improved")]
    lines += ["## Regression verdicts", ""]
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
    return "\n".join([*lines, ""])


def write_markdown(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- collected data

# A figure's own interval columns (texts/s and tokens/s only borrow QPS' for the detector).
OWN_INTERVALS: dict[str, tuple[str, str]] = {
    metric: (low, high) for metric, (low, high, of) in INTERVALS.items() if of == metric
}
# The figures of the report's rows: runs_comparison's metrics, p99.9, their intervals, the
# SLO figures, the peak a search found and texts/s (what a million embeddings cost at).
REPORT_METRICS: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *COMPARISON_METRICS,
            "texts_per_s",
            "p999_ms",
            *(column for bounds in OWN_INTERVALS.values() for column in bounds),
            "slo_p99_ms",
            "goodput_per_s",
            "peak_load",
            "peak_qps",
        )
    )
)
PEAK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("runtime", "runtime"),
    ("scenario", "scenario"),
    ("slo_p99_ms", "SLO p99 ms"),
    ("search_over", "over"),
    ("peak_load", "peak load"),
    ("peak_qps", "peak QPS"),
    ("p99_ms", "p99 ms at peak"),
    ("search_probes", "probes"),
    ("search_reason", "search"),
)
# Label a pipeline may set with the server's start-to-healthy time (seconds).
COLD_START_LABEL = "start_to_healthy_s"
# Label the pipeline sets on a tuned target: embench.tuning's record, as JSON.
TUNING_LABEL = "autotune"
COLD_START_ABSENT = (
    "not stored: the result documents of this run carry no server start-to-healthy time "
    "(it is logged by the start_server task only)"
)


@dataclass
class ReportData:
    """Everything a report shows, read from the store once."""

    title: str
    rows: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    environments: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    comparison: list[ModelComparison] = field(default_factory=list)
    cost: list[CostRanking] = field(default_factory=list)  # by $ per million embeddings
    tuning: list[dict[str, Any]] = field(default_factory=list)  # embench.tuning_report rows
    # planned targets with no stored result, and why (embench.run_outcome)
    not_measured: list[dict[str, Any]] = field(default_factory=list)
    generated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def collect(session: Session, ingest_keys: Sequence[str], title: str) -> ReportData:
    """The report of the stored runs `ingest_keys` (one pipeline run's map indexes, say)."""
    keys = list(ingest_keys)
    rows = runs_comparison(session, keys, REPORT_METRICS)
    stmt = (
        sa.select(Run, Environment, ModelArtifact.parity)
        .join(Environment, Environment.id == Run.environment_id)
        .outerjoin(ModelArtifact, ModelArtifact.id == Run.artifact_id)
        .where(Run.ingest_key.in_(keys))
        .order_by(Run.model, Run.variant, Run.runtime, Run.ingest_key)
    )
    runs: list[dict[str, Any]] = []
    environments: dict[int, dict[str, Any]] = {}
    verdicts: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    by_key: dict[str, dict[str, Any]] = {}
    for run, env, parity in session.execute(stmt).all():
        parity = parity or (run.document.get("metadata", {}).get("server_info") or {}).get("parity")
        parity = parity or parity_from_labels(run.labels)  # a peer's: through its API only
        info = {
            "ingest_key": run.ingest_key,
            "run_id": run.doc_run_id,
            "model": run.model,
            "variant": run.variant,
            "runtime": run.runtime,
            "runtime_version": run.runtime_version,
            "status": run.status,
            "status_reason": run.status_reason,
            "valid": run.valid,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "git_sha": run.git_sha,
            "image": run.image,
            "model_load_ms": run.model_load_ms,
            "cold_start_s": _float((run.labels or {}).get(COLD_START_LABEL)),
            "tuning": tuning_record(run.labels, TUNING_LABEL),
            "parity": parity if isinstance(parity, dict) else None,
            "environment_id": env.id,
            "server_config": run.server_config,
            **run_costs(run.labels, _wall_s(run)),
        }
        runs.append(info)
        by_key[run.ingest_key] = info
        environments.setdefault(env.id, {"id": env.id, **env.document})
        for verdict in stored_verdicts(session, run.id):
            verdicts.append(
                {
                    **verdict,
                    "model": run.model,
                    "variant": run.variant,
                    "runtime": run.runtime,
                    "ingest_key": run.ingest_key,
                }
            )
        if run.status != "complete":  # an invalid scenario of a complete run has its flags
            warnings.append(
                {
                    "who": _who(info),
                    "scenario": None,
                    "severity": "invalid" if not run.valid else "warning",
                    "code": f"run_{run.status}",
                    "message": run.status_reason or f"run status {run.status}",
                }
            )
        for note in (run.document or {}).get("notes") or []:
            warnings.append(
                {
                    "who": _who(info),
                    "scenario": None,
                    "severity": "note",
                    "code": "note",
                    "message": str(note),
                }
            )
    details = (
        sa.select(
            Run.ingest_key,
            ScenarioRow.name,
            ScenarioRow.definition,
            ScenarioRow.flags,
            ScenarioRow.percentile_notes,
            ScenarioRow.search_over,
            ScenarioRow.search_reason,
            ScenarioRow.search_probes,
        )
        .join(Run, Run.id == ScenarioRow.run_pk)
        .where(Run.ingest_key.in_(keys))
    )
    scenario_info = {
        (key, name): (definition or {}, flags or [], notes or {}, over, reason, probes or [])
        for key, name, definition, flags, notes, over, reason, probes in session.execute(details)
    }
    marks: dict[tuple[str, str], dict[str, str]] = {}
    unreported: dict[str, list[str]] = {}  # percentile -> what each result lacked
    for verdict in verdicts:
        if verdict["status"] in ("regressed", "improved"):
            slot = marks.setdefault((verdict["ingest_key"], verdict["scenario"]), {})
            slot[verdict["metric"]] = verdict["status"]
    for row in rows:
        definition, flags, notes, over, reason, probes = scenario_info.get(
            (row["ingest_key"], row["scenario"]), ({}, [], {}, None, None, [])
        )
        row["percentile_notes"] = notes
        row["search_over"] = over
        row["search_reason"] = reason
        row["search_probes"] = len(probes) if over else None
        for name, need in notes.items():
            unreported.setdefault(name, []).append(need)
        run_info = by_key.get(row["ingest_key"], {})
        parity = run_info.get("parity") or {}
        row["mode"] = definition.get("mode")
        row["concurrency"] = definition.get("concurrency")
        row["rate"] = definition.get("rate")
        row["parity_mean_cosine"] = _float(parity.get("mean_cosine"))
        row["cold_start_s"] = run_info.get("cold_start_s")
        row["verdicts"] = marks.get((row["ingest_key"], row["scenario"]), {})
        row["flags"] = [f.get("code") for f in flags if isinstance(f, dict)]
        for flag in flags:
            if isinstance(flag, dict):
                warnings.append(
                    {
                        "who": _who(row),
                        "scenario": row["scenario"],
                        "severity": flag.get("severity", "warning"),
                        "code": flag.get("code", ""),
                        "message": flag.get("message", ""),
                    }
                )
    warnings += [_unreported(name, needs) for name, needs in unreported.items()]
    rows.sort(
        key=lambda r: (
            str(r["model"]),
            str(r.get("mode")),
            r.get("concurrency") or 0,
            r.get("rate") or 0,
            str(r["scenario"]),
            str(r["variant"]),
            str(r["runtime"]),
        )
    )
    return ReportData(
        title=title,
        rows=rows,
        verdicts=verdicts,
        runs=runs,
        environments=list(environments.values()),
        warnings=warnings,
        series=_series(rows),
        comparison=compare_runtimes(rows, runs),
        cost=rank_by_cost(rows),
        tuning=tuning_rows(runs),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _wall_s(run: Run) -> float | None:
    """The client's wall time of a stored run (its document's start to finish)."""
    if run.started_at is None or run.finished_at is None:
        return None
    return (utc(run.finished_at) - utc(run.started_at)).total_seconds()


def _unreported(name: str, needs: list[str]) -> dict[str, Any]:
    """One line per percentile that some results could not support ("needs at least 3688
    requests for a 95% interval; 737 measured" from each)."""
    requirement = needs[0].split(";")[0]
    measured = sorted(int(m[1]) for n in needs if (m := re.search(r"(\d+) measured", n)))
    seen = f" ({measured[0]}-{measured[-1]} measured)" if measured else ""
    return {
        "who": "",
        "scenario": None,
        "severity": "note",
        "code": f"{name}_not_reported",
        "message": f"not reported in {len(needs)} scenario result(s): {requirement}{seen}",
    }


def _who(item: dict[str, Any]) -> str:
    return "/".join(str(item.get(k)) for k in ("model", "variant", "runtime") if item.get(k))


def _series(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart series per stored run: its closed-loop scenarios ordered by concurrency."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("mode") == "closed" and isinstance(row.get("concurrency"), int):
            grouped.setdefault(row["ingest_key"], []).append(row)
    names = [_who(points[0]) for points in grouped.values()]
    series = []
    for (key, points), name in zip(grouped.items(), names, strict=True):
        points.sort(key=lambda r: r["concurrency"])
        label = name if names.count(name) == 1 else f"{name} ({key.rsplit('/', 1)[-1]})"
        series.append(
            {
                "name": label,
                "ingest_key": key,
                "concurrency": [r["concurrency"] for r in points],
                "scenario": [r["scenario"] for r in points],
                "qps": [r.get("qps") for r in points],
                "p50_ms": [r.get("p50_ms") for r in points],
                "p99_ms": [r.get("p99_ms") for r in points],
                "p999_ms": [r.get("p999_ms") for r in points],
            }
        )
    return series


def _markdown_peaks(peaks: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["## Peak throughput under the latency SLO", ""]
    lines.append("| model | " + " | ".join(label for _, label in PEAK_COLUMNS) + " |")
    lines.append("|---|" + "---|" * len(PEAK_COLUMNS))
    for row in peaks:
        cells = [_md(row["model"]), *(_md(figure(row, k)) for k, _ in PEAK_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _markdown_details(data: ReportData) -> list[str]:
    lines = ["## Model load and cold start", ""]
    lines.append("| run | load ms | cold start s | parity (mean / min cosine) |")
    lines.append("|---|---|---|---|")
    for run in data.runs:
        parity = run.get("parity") or {}
        lines.append(
            f"| {_md(_who(run))} | {cell('model_load_ms', run.get('model_load_ms'))} | "
            f"{cell('cold_start_s', run.get('cold_start_s'))} | "
            f"{_md(_parity_text(parity))} |"
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


def _parity_text(parity: dict[str, Any]) -> str:
    mean, low = _float(parity.get("mean_cosine")), _float(parity.get("min_cosine"))
    if mean is None:
        return "-"
    return f"{mean:.5f} / {low:.5f}" if low is not None else f"{mean:.5f}"


# ------------------------------------------------------------------------------ HTML


def html(data: ReportData, plotly_src: str | None = None) -> str:
    """The HTML report: with `plotly_src` None, Plotly's script is inlined (a self-contained
    file); else the page loads it from that URL (the UI serves its bundled copy)."""
    from embench.ui.render import plotly_js, render

    inline = plotly_js() if plotly_src is None else None
    return render(
        "report.html",
        data=data,
        columns=COLUMNS,
        peak_columns=PEAK_COLUMNS,
        cost=data.cost,
        cost_runs=[r for r in data.runs if r.get(PRICE_LABEL) is not None],
        usd_text=usd_text,
        cell=cell,
        figure=figure,
        parity_text=_parity_text,
        comparison=[c.to_dict() for c in data.comparison if len(c.entries) > 1],
        value_text=value_text,
        ratio_text=ratio_text,
        cold_start_absent=COLD_START_ABSENT,
        plotly_inline=inline,
        plotly_src=plotly_src,
        base="",
    )


def write_report(out_dir: Path, data: ReportData, stem: str = "report") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.html` under `out_dir`; returns both paths."""
    md_path = write_markdown(
        out_dir / f"{stem}.md", markdown(data.rows, data.verdicts, data.title, data)
    )
    html_path = out_dir / f"{stem}.html"
    html_path.write_text(html(data), encoding="utf-8")
    return md_path, html_path


def resolve_ingest_keys(session: Session, run: str) -> tuple[list[str], str]:
    """The stored runs named by RUN: an ingest key, a document run_id, a run number, or an
    Airflow DAG run (`DAG_RUN_ID`, or `DAG_ID/DAG_RUN_ID`) whose map indexes are reported
    together. Returns the keys and a title."""
    dag_keys = session.scalars(
        sa.select(Run.ingest_key).where(Run.dag_run_id == run).order_by(Run.map_index)
    ).all()
    if not dag_keys and "/" in run:
        dag_id, _, dag_run_id = run.partition("/")
        dag_keys = list(dag_run_ingest_keys(session, dag_id, dag_run_id))
    if dag_keys:
        return list(dag_keys), f"Embedding benchmark {run}"
    pk = resolve_run(session, run)
    key = session.scalar(sa.select(Run.ingest_key).where(Run.id == pk))
    return [str(key)], f"Embedding benchmark {key}"


# ------------------------------------------------------------------------- the command


def add_report_command(commands: Any) -> None:
    """Register `embench report RUN` on the `embench` subparsers object."""
    report = commands.add_parser(
        "report", help="write a run's report (Markdown and self-contained HTML)"
    )
    report.add_argument(
        "run", help="ingest key, DAG run id (DAG_ID/RUN_ID or RUN_ID), run_id or run number"
    )
    report.add_argument(
        "--out-dir", type=Path, help="folder for report.md/.html (default: data dir)"
    )
    report.add_argument("--db-url", help="results database (default: EMBENCH_DB_URL or SQLite)")
    report.add_argument("--json", action="store_true", help="print the paths as JSON")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: Any) -> int:
    import json
    import re

    from embench.paths import data_dir
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
