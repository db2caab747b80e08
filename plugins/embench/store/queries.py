"""History queries: library functions shared by the CLI, the API and the UI. Every query is
built with SQLAlchemy expressions (bound parameters, no SQL text); metric names are checked
against the schema's numeric columns. Results are plain dicts, JSON-ready."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from embench.cost import run_costs, scenario_costs
from embench.store.detect import INTERVALS, metric_column, resolve_run, stored_verdicts
from embench.store.ingest import utc
from embench.store.limits import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    RUNS_LIMIT_DEFAULT,
    RUNS_LIMIT_MAX,
    Page,
    check_limit,
)
from embench.store.models import NUMERIC_FIELDS, SCALAR_FIELDS, Run, ScenarioRow, VerdictRow

# The comparison table: variant/runtime x scenario -> these figures.
COMPARISON_METRICS: tuple[str, ...] = (
    "qps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "server_cpu_pct_mean",
    "server_rss_bytes_max",
)
# compare_runs: the figures set side by side.
COMPARE_METRICS: tuple[str, ...] = (
    "qps",
    "texts_per_s",
    "tokens_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "error_rate",
    "server_cpu_pct_mean",
    "server_rss_bytes_max",
    "client_cpu_pct_mean",
)
RUN_COLUMNS: tuple[str, ...] = (
    "ingest_key",
    "doc_run_id",
    "dag_id",
    "dag_run_id",
    "map_index",
    "try_number",
    "trigger_kind",
    "status",
    "valid",
    "started_at",
    "finished_at",
    "git_sha",
    "model",
    "variant",
    "runtime",
    "runtime_version",
    "model_load_ms",
    "server_config_key",
    "baseline_key",
)


def _iso(value: Any) -> Any:
    return utc(value).isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class RunFilter:
    model: str | None = None
    variant: str | None = None
    runtime: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        conditions: list[sa.ColumnElement[bool]] = []
        for name in ("model", "variant", "runtime", "status"):
            if (value := getattr(self, name)) is not None:
                conditions.append(getattr(Run, name) == value)
        if self.since is not None:
            conditions.append(Run.started_at >= utc(self.since))
        if self.until is not None:
            conditions.append(Run.started_at < utc(self.until))
        return conditions


def _run_dict(run: Run) -> dict[str, Any]:
    out = {name: _iso(getattr(run, name)) for name in RUN_COLUMNS}
    out["run_pk"] = run.id
    return out


def list_runs(
    session: Session, filters: RunFilter = RunFilter(), limit: int = 100
) -> list[dict[str, Any]]:
    """Runs matching `filters`, newest first, each with its scenario and regression counts."""
    scenarios = (
        sa.select(sa.func.count(ScenarioRow.id))
        .where(ScenarioRow.run_pk == Run.id)
        .scalar_subquery()
    )
    regressed = (
        sa.select(sa.func.count(VerdictRow.id))
        .where(VerdictRow.run_pk == Run.id, VerdictRow.status == "regressed")
        .scalar_subquery()
    )
    stmt = (
        sa.select(Run, scenarios, regressed)
        .where(*filters.conditions())
        .order_by(Run.started_at.desc(), Run.id.desc())
        .limit(limit)
    )
    return [
        {**_run_dict(run), "scenarios": n, "regressions": r}
        for run, n, r in session.execute(stmt).all()
    ]


def recent_runs(
    session: Session, filters: RunFilter = RunFilter(), limit: int = RUNS_LIMIT_DEFAULT
) -> Page:
    """list_runs, newest first, at most `limit` (1..RUNS_LIMIT_MAX), saying whether older
    runs were left off."""
    check_limit(limit, RUNS_LIMIT_MAX)
    rows = list_runs(session, filters, limit + 1)
    return Page(rows[:limit], limit, len(rows) > limit)


def recent_history(
    session: Session, metric: str, *, limit: int = HISTORY_LIMIT_DEFAULT, **filters: Any
) -> Page:
    """metric_history's newest `limit` points (1..HISTORY_LIMIT_MAX; still oldest first, as
    a chart draws them), saying whether older points were left off."""
    check_limit(limit, HISTORY_LIMIT_MAX)
    points = metric_history(session, metric, limit=limit + 1, **filters)
    truncated = len(points) > limit
    return Page(points[1:] if truncated else points, limit, truncated)


def metric_history(
    session: Session,
    metric: str,
    *,
    model: str,
    variant: str | None = None,
    scenario: str | None = None,
    runtime: str | None = None,
    comparability_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    valid_only: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The values of `metric` over time (oldest first) for a model/variant/scenario/runtime,
    optionally restricted to one comparability key; each point names its key and baseline so
    a chart can break the line where the baseline changes. `limit` keeps the newest points."""
    column = metric_column(metric)
    # the figure's own interval (not one borrowed for the detector), else none
    low, high, of = INTERVALS.get(metric, (None, None, None))
    has_interval = of == metric
    stmt = sa.select(
        ScenarioRow.started_at,
        column.label("value"),
        (getattr(ScenarioRow, low) if has_interval else sa.null()).label("ci_low"),
        (getattr(ScenarioRow, high) if has_interval else sa.null()).label("ci_high"),
        ScenarioRow.stable,
        ScenarioRow.name,
        ScenarioRow.variant,
        ScenarioRow.runtime,
        ScenarioRow.valid,
        ScenarioRow.comparability_key,
        ScenarioRow.baseline_key,
        Run.doc_run_id,
        Run.ingest_key,
        Run.git_sha,
        VerdictRow.status.label("verdict"),
    ).join(Run, Run.id == ScenarioRow.run_pk)
    stmt = stmt.outerjoin(
        VerdictRow,
        sa.and_(
            VerdictRow.scenario_result_id == ScenarioRow.id,
            VerdictRow.metric == metric,
            VerdictRow.kind == "night",  # one point, one night verdict (upgrades aside)
        ),
    )
    if comparability_key is not None:
        stmt = stmt.where(ScenarioRow.comparability_key == comparability_key)
    stmt = stmt.where(ScenarioRow.model == model)
    for name, value in (("variant", variant), ("name", scenario), ("runtime", runtime)):
        if value is not None:
            stmt = stmt.where(getattr(ScenarioRow, name) == value)
    if since is not None:
        stmt = stmt.where(ScenarioRow.started_at >= utc(since))
    if until is not None:
        stmt = stmt.where(ScenarioRow.started_at < utc(until))
    if valid_only:
        stmt = stmt.where(ScenarioRow.valid.is_(True))
    stmt = stmt.order_by(ScenarioRow.started_at.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    points = [
        {
            "time": _iso(row.started_at),
            "value": row.value,
            "ci_low": row.ci_low,
            "ci_high": row.ci_high,
            "stable": row.stable,
            "scenario": row.name,
            "variant": row.variant,
            "runtime": row.runtime,
            "valid": row.valid,
            "comparability_key": row.comparability_key,
            "baseline_key": row.baseline_key,
            "run_id": row.doc_run_id,
            "ingest_key": row.ingest_key,
            "git_sha": row.git_sha,
            "verdict": row.verdict,
        }
        for row in session.execute(stmt).all()
    ]
    points.reverse()
    return points


def latest_comparison(
    session: Session, model: str | None = None, metrics: Sequence[str] = COMPARISON_METRICS
) -> list[dict[str, Any]]:
    """The seed's comparison table: for the newest run of each model/variant/runtime,
    one row per scenario with QPS, p50/p95/p99, server CPU, RSS and model load time."""
    for metric in metrics:
        metric_column(metric)
    newest = (
        sa.select(
            Run.id,
            sa.func.row_number()
            .over(
                partition_by=(Run.model, Run.variant, Run.runtime),
                order_by=(Run.started_at.desc(), Run.id.desc()),
            )
            .label("rank"),
        )
        .where(*([Run.model == model] if model is not None else []))
        .subquery()
    )
    stmt = (
        sa.select(Run, ScenarioRow)
        .join(newest, sa.and_(newest.c.id == Run.id, newest.c.rank == 1))
        .join(ScenarioRow, ScenarioRow.run_pk == Run.id)
        .order_by(Run.model, ScenarioRow.name, Run.variant, Run.runtime)
    )
    return [_comparison_row(run, row, metrics) for run, row in session.execute(stmt).all()]


def runs_comparison(
    session: Session, ingest_keys: Sequence[str], metrics: Sequence[str] = COMPARISON_METRICS
) -> list[dict[str, Any]]:
    """The comparison table of the given runs (one pipeline run's variants, say)."""
    for metric in metrics:
        metric_column(metric)
    stmt = (
        sa.select(Run, ScenarioRow)
        .join(ScenarioRow, ScenarioRow.run_pk == Run.id)
        .where(Run.ingest_key.in_(list(ingest_keys)))
        .order_by(Run.model, ScenarioRow.name, Run.variant, Run.runtime, Run.ingest_key)
    )
    return [_comparison_row(run, row, metrics) for run, row in session.execute(stmt).all()]


def dag_run_ingest_keys(session: Session, dag_id: str, dag_run_id: str) -> list[str]:
    """The stored runs of one pipeline run (each of its map indexes)."""
    stmt = (
        sa.select(Run.ingest_key)
        .where(Run.dag_id == dag_id, Run.dag_run_id == dag_run_id)
        .order_by(Run.map_index)
    )
    return list(session.scalars(stmt))


def multi_target_pipeline_runs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The latest pipeline runs that measured more than one (runtime, variant) of a model:
    those a runtime comparison can be drawn from. Newest first."""
    targets = sa.func.count(sa.distinct(Run.runtime + "/" + Run.variant))
    stmt = (
        sa.select(
            Run.dag_id,
            Run.dag_run_id,
            sa.func.min(Run.started_at).label("started_at"),
            sa.func.count(sa.distinct(Run.model)).label("models"),
            targets.label("targets"),
        )
        .where(Run.dag_run_id.is_not(None))
        .group_by(Run.dag_id, Run.dag_run_id)
        .having(targets > 1)
        .order_by(sa.func.min(Run.started_at).desc())
        .limit(limit)
    )
    return [
        {
            "dag_id": dag_id,
            "dag_run_id": dag_run_id,
            "started_at": _iso(started_at),
            "models": models,
            "targets": n_targets,
        }
        for dag_id, dag_run_id, started_at, models, n_targets in session.execute(stmt)
    ]


def verdicts_of_runs(session: Session, ingest_keys: Sequence[str]) -> list[dict[str, Any]]:
    pks = session.scalars(sa.select(Run.id).where(Run.ingest_key.in_(list(ingest_keys))))
    return [verdict for pk in pks for verdict in stored_verdicts(session, pk)]


def _comparison_row(run: Run, row: ScenarioRow, metrics: Sequence[str]) -> dict[str, Any]:
    return {
        "model": run.model,
        "variant": run.variant,
        "runtime": run.runtime,
        "scenario": row.name,
        **{metric: getattr(row, metric) for metric in metrics},
        "model_load_ms": run.model_load_ms,
        "valid": row.valid,
        "run_id": run.doc_run_id,
        "ingest_key": run.ingest_key,
        "started_at": _iso(run.started_at),
        **_row_costs(run, row),
    }


def _row_costs(run: Run, row: ScenarioRow) -> dict[str, Any]:
    """The row's price (from its run's labels) and cost per million embeddings: at its
    texts/s, and for a search scenario at the peak (peak QPS x texts per request)."""
    texts_per_request = (row.definition or {}).get("texts_per_request")
    return scenario_costs(
        run.labels,
        row.texts_per_s,
        row.peak_qps if row.search_over else None,
        texts_per_request if isinstance(texts_per_request, int) else None,
    )


def _run_costs(run: Run) -> dict[str, Any]:
    wall = (utc(run.finished_at) - utc(run.started_at)).total_seconds() if run.finished_at else None
    return run_costs(run.labels, wall)


def _delta(a: float | None, b: float | None) -> tuple[float | None, float | None]:
    if a is None or b is None:
        return None, None
    delta = b - a
    return delta, (delta / abs(a) if a else None)


def compare_runs(
    session: Session, run_a: str | int, run_b: str | int, metrics: Sequence[str] = COMPARE_METRICS
) -> dict[str, Any]:
    """Two runs side by side, scenario by scenario (matched by name): A, B, B-A and (B-A)/|A|,
    plus whether the scenarios are comparable (same comparability key) and B's verdicts."""
    for metric in metrics:
        metric_column(metric)
    pk_a, pk_b = resolve_run(session, run_a), resolve_run(session, run_b)
    runs = {r.id: r for r in session.scalars(sa.select(Run).where(Run.id.in_((pk_a, pk_b))))}
    rows = session.scalars(sa.select(ScenarioRow).where(ScenarioRow.run_pk.in_((pk_a, pk_b)))).all()
    by_name: dict[str, dict[int, ScenarioRow]] = {}
    for row in rows:
        by_name.setdefault(row.name, {})[row.run_pk] = row
    scenarios = []
    for name in sorted(by_name):
        a, b = by_name[name].get(pk_a), by_name[name].get(pk_b)
        figures = []
        for metric in metrics:
            va = getattr(a, metric) if a is not None else None
            vb = getattr(b, metric) if b is not None else None
            delta, relative = _delta(va, vb)
            figures.append(
                {"metric": metric, "a": va, "b": vb, "delta": delta, "relative": relative}
            )
        # what a million embeddings cost at each side's throughput and price (priced runs)
        ca = _row_costs(runs[pk_a], a)["usd_per_million"] if a is not None else None
        cb = _row_costs(runs[pk_b], b)["usd_per_million"] if b is not None else None
        if ca is not None or cb is not None:
            delta, relative = _delta(ca, cb)
            figures.append(
                {
                    "metric": "usd_per_million",
                    "a": ca,
                    "b": cb,
                    "delta": delta,
                    "relative": relative,
                }
            )
        scenarios.append(
            {
                "scenario": name,
                "in_a": a is not None,
                "in_b": b is not None,
                "comparable": a is not None
                and b is not None
                and a.comparability_key == b.comparability_key,
                "metrics": figures,
            }
        )
    load_delta, load_relative = _delta(runs[pk_a].model_load_ms, runs[pk_b].model_load_ms)
    return {
        "a": {**_run_dict(runs[pk_a]), **_run_costs(runs[pk_a])},
        "b": {**_run_dict(runs[pk_b]), **_run_costs(runs[pk_b])},
        "model_load_ms": {
            "a": runs[pk_a].model_load_ms,
            "b": runs[pk_b].model_load_ms,
            "delta": load_delta,
            "relative": load_relative,
        },
        "scenarios": scenarios,
        "verdicts_b": stored_verdicts(session, pk_b),
    }


EXPORT_RUN_COLUMNS: tuple[str, ...] = (
    "doc_run_id",
    "ingest_key",
    "git_sha",
    "trigger_kind",
    "model_load_ms",
)


def export_csv(session: Session, out: IO[str], filters: RunFilter = RunFilter()) -> int:
    """Write one CSV row per scenario result of the runs matching `filters` (oldest first),
    every scalar statistic a column. Returns the number of rows written."""
    scalar = list(SCALAR_FIELDS)
    header = ["model", "variant", "runtime", *EXPORT_RUN_COLUMNS, "baseline_key", *scalar]
    writer = csv.writer(out)
    writer.writerow(header)
    stmt = (
        sa.select(Run, ScenarioRow)
        .join(ScenarioRow, ScenarioRow.run_pk == Run.id)
        .where(*filters.conditions())
        .order_by(ScenarioRow.started_at, ScenarioRow.name)
        .execution_options(yield_per=1000)
    )
    count = 0
    for run, row in session.execute(stmt):
        values = [run.model, run.variant, run.runtime]
        values += [getattr(run, name) for name in EXPORT_RUN_COLUMNS]
        values += [row.baseline_key, *(_iso(getattr(row, name)) for name in scalar)]
        writer.writerow(["" if v is None else v for v in values])
        count += 1
    return count


__all__ = [
    "COMPARE_METRICS",
    "COMPARISON_METRICS",
    "HISTORY_LIMIT_DEFAULT",
    "HISTORY_LIMIT_MAX",
    "NUMERIC_FIELDS",
    "RUNS_LIMIT_DEFAULT",
    "RUNS_LIMIT_MAX",
    "Page",
    "RunFilter",
    "check_limit",
    "compare_runs",
    "export_csv",
    "latest_comparison",
    "list_runs",
    "metric_history",
    "recent_history",
    "recent_runs",
]
