"""Regression detection against stored history: glue between the store and
embench.regression.judge. For every scenario of a run and every configured metric, the
history is the earlier valid results of the same comparability key and baseline key (same
environment and library versions), oldest first. Verdicts are stored with the run (replacing
earlier ones) and returned; the caller decides whether a regression warns or fails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from embench.errors import EmbenchError
from embench.regression import DetectorSettings, Verdict, judge
from embench.store.db import session_scope, with_retries
from embench.store.models import NUMERIC_FIELDS, Run, ScenarioRow, VerdictRow


def settings_from_config(config: Any) -> DetectorSettings:
    """DetectorSettings from a RegressionConfig (benchmark.yaml `regression:`)."""
    return DetectorSettings(
        lookback=config.lookback,
        min_history=config.min_history,
        z_threshold=config.z_threshold,
        confirm_z=config.confirm_z,
        min_relative_change=config.min_relative_change,
    )


def metric_column(metric: str) -> sa.orm.InstrumentedAttribute[Any]:
    if metric not in NUMERIC_FIELDS:
        raise EmbenchError(
            f"unknown metric {metric!r}; expected one of: {', '.join(NUMERIC_FIELDS)}"
        )
    return getattr(ScenarioRow, metric)


def history_values(session: Session, row: ScenarioRow, metric: str, limit: int) -> list[float]:
    """Up to `limit` earlier values of `metric`, same key and baseline, valid, oldest first."""
    column = metric_column(metric)
    stmt = (
        sa.select(column)
        .where(
            ScenarioRow.comparability_key == row.comparability_key,
            ScenarioRow.baseline_key == row.baseline_key,
            ScenarioRow.started_at < row.started_at,
            ScenarioRow.run_pk != row.run_pk,
            ScenarioRow.valid.is_(True),
            column.is_not(None),
        )
        .order_by(ScenarioRow.started_at.desc())
        .limit(limit)
    )
    return [float(v) for v in reversed(session.scalars(stmt).all())]


def detect_in_session(
    session: Session, run_pk: int, settings: DetectorSettings, metrics: Sequence[str]
) -> list[Verdict]:
    """Judge every valid scenario of run `run_pk` on `metrics`; store and return verdicts."""
    for metric in metrics:
        metric_column(metric)
    session.execute(sa.delete(VerdictRow).where(VerdictRow.run_pk == run_pk))
    rows = session.scalars(
        sa.select(ScenarioRow).where(ScenarioRow.run_pk == run_pk).order_by(ScenarioRow.name)
    ).all()
    now = datetime.now(UTC)
    verdicts: list[Verdict] = []
    for row in rows:
        if not row.valid:
            continue  # an invalid result is no evidence either way
        for metric in metrics:
            value = getattr(row, metric)
            if value is None or not math.isfinite(value):
                continue
            # the detector uses the previous night plus `lookback` before it
            history = history_values(session, row, metric, settings.lookback + 1)
            verdict = judge(metric, float(value), history, settings)
            verdicts.append(verdict)
            session.add(
                VerdictRow(
                    run_pk=run_pk,
                    scenario_result_id=row.id,
                    metric=metric,
                    status=verdict.status,
                    value=verdict.value,
                    direction=verdict.direction.value,
                    history_size=verdict.history_size,
                    baseline_median=verdict.baseline_median,
                    relative_change=_finite(verdict.relative_change),
                    z_score=_finite(verdict.z_score),
                    reason=f"{row.name}: {verdict.reason}",
                    settings={
                        "lookback": settings.lookback,
                        "min_history": settings.min_history,
                        "z_threshold": settings.z_threshold,
                        "confirm_z": settings.confirm_z,
                        "min_relative_change": settings.min_relative_change,
                    },
                    created_at=now,
                )
            )
    session.flush()
    return verdicts


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def detect_regressions(
    engine: Engine, run: str | int, settings: DetectorSettings, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Judge a stored run (ingest key, document run_id or primary key) in its own
    transaction; returns the verdicts as dicts with the scenario name."""

    def attempt() -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            run_pk = resolve_run(session, run)
            detect_in_session(session, run_pk, settings, metrics)
            return stored_verdicts(session, run_pk)

    return with_retries(engine, f"detect {run}", attempt)


def stored_verdicts(session: Session, run_pk: int) -> list[dict[str, Any]]:
    stmt = (
        sa.select(VerdictRow, ScenarioRow.name)
        .join(ScenarioRow, ScenarioRow.id == VerdictRow.scenario_result_id)
        .where(VerdictRow.run_pk == run_pk)
        .order_by(ScenarioRow.name, VerdictRow.metric)
    )
    return [
        {
            "scenario": name,
            "metric": v.metric,
            "status": v.status,
            "value": v.value,
            "direction": v.direction,
            "history_size": v.history_size,
            "baseline_median": v.baseline_median,
            "relative_change": v.relative_change,
            "z_score": v.z_score,
            "reason": v.reason,
        }
        for v, name in session.execute(stmt).all()
    ]


def resolve_run(session: Session, run: str | int) -> int:
    """The primary key of a run named by ingest key, document run_id, or number."""
    text = str(run)
    for condition in (Run.ingest_key == text, Run.doc_run_id == text):
        found = session.scalars(
            sa.select(Run.id).where(condition).order_by(Run.started_at.desc())
        ).first()
        if found is not None:
            return found
    if text.isdigit():
        found = session.scalar(sa.select(Run.id).where(Run.id == int(text)))
        if found is not None:
            return found
    raise EmbenchError(f"no stored run {text!r} (give an ingest key, a run_id or a run number)")
