"""The report's data: everything it shows, read from the store once (`collect`), and the
stored runs a name refers to (`resolve_ingest_keys`). Both formats render from ReportData."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from embench.cost import PRICE_LABEL, run_costs
from embench.report.cost import CostRanking, rank_by_cost
from embench.report.runtimes import ModelComparison, compare_runtimes
from embench.report.text import OWN_INTERVALS, to_float, who_text
from embench.report.tuning import tuning_record, tuning_rows
from embench.served_parity import parity_from_labels
from embench.store.detect import resolve_run, stored_verdicts
from embench.store.ingest import utc
from embench.store.models import Environment, ModelArtifact, Run, ScenarioRow
from embench.store.queries import COMPARISON_METRICS, dag_run_ingest_keys, runs_comparison

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
# Label a pipeline may set with the server's start-to-healthy time (seconds).
COLD_START_LABEL = "start_to_healthy_s"
# Label the pipeline sets on a tuned target: embench.tuning's record, as JSON.
TUNING_LABEL = "autotune"


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
    tuning: list[dict[str, Any]] = field(default_factory=list)  # embench.report.tuning rows
    # planned targets with no stored result, and why (embench.run_outcome)
    not_measured: list[dict[str, Any]] = field(default_factory=list)
    generated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def compared(self) -> list[dict[str, Any]]:
        """The runtime comparisons with more than one target (those worth a table)."""
        return [c.to_dict() for c in self.comparison if len(c.entries) > 1]

    @property
    def priced_runs(self) -> list[dict[str, Any]]:
        """The stored runs that carry a price (what the benchmark itself cost)."""
        return [r for r in self.runs if r.get(PRICE_LABEL) is not None]


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
            "cold_start_s": to_float((run.labels or {}).get(COLD_START_LABEL)),
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
                    "who": who_text(info),
                    "scenario": None,
                    "severity": "invalid" if not run.valid else "warning",
                    "code": f"run_{run.status}",
                    "message": run.status_reason or f"run status {run.status}",
                }
            )
        for note in (run.document or {}).get("notes") or []:
            warnings.append(
                {
                    "who": who_text(info),
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
        row["parity_mean_cosine"] = to_float(parity.get("mean_cosine"))
        row["cold_start_s"] = run_info.get("cold_start_s")
        row["verdicts"] = marks.get((row["ingest_key"], row["scenario"]), {})
        row["flags"] = [f.get("code") for f in flags if isinstance(f, dict)]
        for flag in flags:
            if isinstance(flag, dict):
                warnings.append(
                    {
                        "who": who_text(row),
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


def _series(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart series per stored run: its closed-loop scenarios ordered by concurrency."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("mode") == "closed" and isinstance(row.get("concurrency"), int):
            grouped.setdefault(row["ingest_key"], []).append(row)
    names = [who_text(points[0]) for points in grouped.values()]
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
