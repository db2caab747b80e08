"""Regression detection against stored history: glue between the store and
embench.regression.

A night is one DAG run (Run.dag_id/dag_run_id), or a run alone when it carries no DAG labels.
Within a comparability key, a night's value of a metric is the median of its usable
repetitions (valid and stable: an invalid or unstable result is no evidence either way), and
the history is one such value per earlier night. The history restarts where the baseline key
changes (runtime version, server libraries, model artifact: see ingest.baseline_key) and at
the newest baseline mark that applies (`embench baseline mark`); during the first
`upgrade_nights` nights after a restart an "upgrade" verdict compares them with the last
nights before it. A regression that the host's probe explains (the host was slower than its
own history, and the value corrected for that is within noise) becomes "explained".

The night is judged once per comparability key; its verdicts are stored on the scenario row
of the newest usable repetition (earlier verdicts of the night are replaced), so the report,
which reads verdicts run by run, lists each judgement once.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from embench.errors import EmbenchError
from embench.regression import (
    DetectorSettings,
    Verdict,
    explain,
    host_adjusted,
    judge,
    judge_upgrade,
)
from embench.store.db import session_scope, with_retries
from embench.store.host_speed import HostSpeed, host_speed
from embench.store.ingest import describe_change, utc
from embench.store.models import NUMERIC_FIELDS, BaselineMark, Run, ScenarioRow, VerdictRow

NightId = tuple[Any, ...]


def settings_from_config(config: Any) -> DetectorSettings:
    """DetectorSettings from a RegressionConfig (benchmark.yaml `regression:`)."""
    return DetectorSettings(
        lookback=config.lookback,
        min_history=config.min_history,
        z_threshold=config.z_threshold,
        confirm_z=config.confirm_z,
        confirm_nights=config.confirm_nights,
        min_relative_change=config.min_relative_change,
        noise_floor=config.noise_floor,
        upgrade_nights=config.upgrade_nights,
        host_slow_threshold=config.host_slow_threshold,
        host_min_history=config.host_min_history,
    )


def metric_column(metric: str) -> sa.orm.InstrumentedAttribute[Any]:
    if metric not in NUMERIC_FIELDS:
        raise EmbenchError(
            f"unknown metric {metric!r}; expected one of: {', '.join(NUMERIC_FIELDS)}"
        )
    return getattr(ScenarioRow, metric)


# ------------------------------------------------------------------ within-run noise


def _interval_columns() -> dict[str, tuple[str, str, str]]:
    """metric -> (interval low, interval high, the figure the interval is of). Texts and
    tokens per second move with QPS, so they borrow its relative interval."""
    pairs: dict[str, tuple[str, str, str]] = {}
    qps = ("qps_ci_low", "qps_ci_high", "qps")
    for metric in ("qps", "texts_per_s", "tokens_per_s", "client_tokens_per_s"):
        pairs[metric] = qps
    for p in ("p50", "p90", "p95", "p99", "p999"):
        pairs[f"{p}_ms"] = (f"{p}_ci_low_ms", f"{p}_ci_high_ms", f"{p}_ms")
    columns = set(ScenarioRow.__table__.columns.keys())
    # columns the result schema does not (yet) carry give no interval
    return {m: spec for m, spec in pairs.items() if set(spec) <= columns}


INTERVALS = _interval_columns()
CONFIDENCE_COLUMN = "confidence" if "confidence" in ScenarioRow.__table__.columns else None


def relative_noise(values: dict[str, Any], metric: str) -> float | None:
    """The relative standard error a run measured for `metric` in itself: its interval's
    width over 2 z (z of the interval's confidence), over the figure."""
    spec = INTERVALS.get(metric)
    if spec is None:
        return None
    low, high, figure = (values.get(name) for name in spec)
    if low is None or high is None or figure is None or figure <= 0 or high < low:
        return None
    confidence = values.get(CONFIDENCE_COLUMN) if CONFIDENCE_COLUMN else None
    z = NormalDist().inv_cdf((1 + (confidence or 0.95)) / 2)
    return (high - low) / (2 * z) / abs(figure)


# ----------------------------------------------------------------------------- nights


@dataclass
class Repetition:
    """One scenario row of a night."""

    id: int
    run_pk: int
    name: str
    started_at: datetime
    usable: bool
    baseline_key: str
    values: dict[str, float | None]
    noise: dict[str, float | None]


@dataclass
class Night:
    ident: NightId
    reps: list[Repetition] = field(default_factory=list)

    @property
    def started_at(self) -> datetime:
        return min(r.started_at for r in self.reps)

    @property
    def newest(self) -> Repetition:
        return max(self.reps, key=lambda r: (r.started_at, r.id))

    @property
    def baseline_key(self) -> str:
        return self.newest.baseline_key

    @property
    def usable(self) -> list[Repetition]:
        return [r for r in self.reps if r.usable]

    def value(self, metric: str) -> float | None:
        values = [
            v for r in self.usable if (v := r.values.get(metric)) is not None and math.isfinite(v)
        ]
        return statistics.median(values) if values else None

    def noise(self, metric: str) -> float | None:
        values = [n for r in self.usable if (n := r.noise.get(metric)) is not None]
        return statistics.median(values) if values else None


def night_id(dag_id: str | None, dag_run_id: str | None, run_pk: int) -> NightId:
    """One DAG run is one night; a run without DAG labels is a night of its own."""
    return ("dag", dag_id, dag_run_id) if dag_id and dag_run_id else ("run", run_pk)


def _night_condition(ident: NightId) -> sa.ColumnElement[bool]:
    if ident[0] == "dag":
        return sa.and_(Run.dag_id == ident[1], Run.dag_run_id == ident[2])
    return ScenarioRow.run_pk == ident[1]


def _value_columns(metrics: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(metrics))
    for metric in metrics:
        names += [c for c in INTERVALS.get(metric, ()) if c not in names]
    if CONFIDENCE_COLUMN:
        names.append(CONFIDENCE_COLUMN)
    return names


def _select(metrics: Sequence[str]) -> sa.Select[Any]:
    columns = [getattr(ScenarioRow, c) for c in _value_columns(metrics)]
    return sa.select(
        ScenarioRow.id,
        ScenarioRow.run_pk,
        ScenarioRow.name,
        ScenarioRow.started_at,
        ScenarioRow.valid,
        ScenarioRow.stable,
        ScenarioRow.baseline_key,
        Run.dag_id,
        Run.dag_run_id,
        *columns,
    ).join(Run, Run.id == ScenarioRow.run_pk)


def _nights(rows: Iterable[Any], metrics: Sequence[str]) -> list[Night]:
    """Rows grouped into nights, in the order the rows come."""
    nights: dict[NightId, Night] = {}
    for row in rows:
        data = dict(row._mapping)
        values = {m: _float(data[m]) for m in metrics}
        rep = Repetition(
            id=row.id,
            run_pk=row.run_pk,
            name=row.name,
            started_at=utc(row.started_at) or datetime.min.replace(tzinfo=UTC),
            usable=bool(row.valid and row.stable),
            baseline_key=row.baseline_key,
            values=values,
            noise={m: relative_noise(data, m) for m in metrics},
        )
        ident = night_id(row.dag_id, row.dag_run_id, row.run_pk)
        nights.setdefault(ident, Night(ident)).reps.append(rep)
    return list(nights.values())


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def earlier_nights(
    session: Session, key: str, tonight: Night, metrics: Sequence[str], wanted: int
) -> list[Night]:
    """Up to `wanted` nights of comparability key `key` before `tonight`, newest first."""
    tonight_runs = {r.run_pk for r in tonight.reps}
    limit = wanted * 4
    while True:
        stmt = (
            _select(metrics)
            .where(
                ScenarioRow.comparability_key == key,
                ScenarioRow.started_at < tonight.started_at,
                ScenarioRow.run_pk.not_in(tonight_runs),
            )
            .order_by(ScenarioRow.started_at.desc(), ScenarioRow.id.desc())
            .limit(limit)
        )
        rows = session.execute(stmt).all()
        nights = _nights(rows, metrics)
        if len(rows) < limit or len(nights) > wanted:
            return nights[:wanted]  # the last night of a full page may be incomplete
        limit *= 4


# --------------------------------------------------------------------------- segments


@dataclass
class Restart:
    """Where tonight's history begins, and what is before it."""

    current: list[Night]  # tonight's baseline nights, newest first
    previous: list[Night]  # the nights before the restart, newest first
    change: str | None  # what restarted it; None: no restart in reach
    compare: bool  # whether the nights after are compared with those before
    details: dict[str, Any]


def applicable_marks(
    session: Session,
    row: Repetition,
    model: str | None,
    variant: str | None,
    runtime: str | None,
    before: datetime,
) -> list[BaselineMark]:
    """Baseline marks that apply to this scenario, made before `before`, oldest first."""
    if model is None:
        return []
    stmt = (
        sa.select(BaselineMark)
        .where(
            BaselineMark.model == model,
            sa.or_(BaselineMark.variant.is_(None), BaselineMark.variant == variant),
            sa.or_(BaselineMark.runtime.is_(None), BaselineMark.runtime == runtime),
            sa.or_(BaselineMark.scenario.is_(None), BaselineMark.scenario == row.name),
            BaselineMark.marked_at <= before,
        )
        .order_by(BaselineMark.marked_at, BaselineMark.id)
    )
    return list(session.scalars(stmt).all())


def split_history(
    session: Session, tonight: Night, earlier: list[Night], marks: list[BaselineMark]
) -> Restart:
    """Tonight's baseline: the nights back to the last change of baseline key or the newest
    applicable mark; and the nights before that, up to the restart before."""
    times = [utc(m.marked_at) for m in marks]

    def segment(night: Night) -> tuple[str, int]:
        return night.baseline_key, bisect.bisect_right(times, night.started_at)

    ours = segment(tonight)
    current: list[Night] = []
    rest = iter(earlier)
    first_before: Night | None = None
    for night in rest:
        if segment(night) != ours:
            first_before = night
            break
        current.append(night)
    if first_before is None:
        return Restart(current, [], None, False, {})
    previous = [first_before]
    for night in rest:
        if segment(night) != segment(first_before):
            break
        previous.append(night)
    if first_before.baseline_key != tonight.baseline_key:
        change = describe_change(
            _metadata(session, first_before.newest.run_pk),
            _metadata(session, tonight.newest.run_pk),
        )
        return Restart(current, previous, change, True, {"change": change})
    mark = marks[ours[1] - 1]
    change = (
        f"baseline mark #{mark.id} {mark.reason!r} "
        f"({utc(mark.marked_at):%Y-%m-%d %H:%M} UTC)"  # type: ignore[str-format]
    )
    return Restart(current, previous, change, mark.compare, {"change": change, "mark": mark.id})


def _metadata(session: Session, run_pk: int) -> dict[str, Any]:
    document = session.scalar(sa.select(Run.document).where(Run.id == run_pk)) or {}
    return document.get("metadata") or {}


# ----------------------------------------------------------------------------- judging


@dataclass
class HostSpeeds:
    """Host speed ratios of runs, read once per detection."""

    session: Session
    min_history: int
    cache: dict[int, HostSpeed | None] = field(default_factory=dict)

    def of(self, run_pk: int) -> HostSpeed | None:
        if run_pk not in self.cache:
            self.cache[run_pk] = host_speed(self.session, run_pk, self.min_history)
        return self.cache[run_pk]


def _explained(
    verdict: Verdict,
    metric: str,
    tonight: Night,
    speeds: HostSpeeds,
    settings: DetectorSettings,
    rejudge: Any,
) -> Verdict:
    """Turn a regression the host's slowness accounts for into "explained"."""
    if verdict.status != "regressed":
        return verdict
    speeds_of = {r.run_pk: speeds.of(r.run_pk) for r in tonight.usable}
    known = [s for s in speeds_of.values() if s is not None]
    if not known:
        return verdict
    ratio = statistics.median(s.ratio for s in known)
    if ratio >= 1 - settings.host_slow_threshold:
        return verdict
    adjusted_values = []
    for rep in tonight.usable:
        value = rep.values.get(metric)
        if value is None or not math.isfinite(value):
            continue
        speed = speeds_of[rep.run_pk]
        adjusted = host_adjusted(metric, value, speed.ratio) if speed else value
        if adjusted is None:
            return verdict  # a metric host speed does not scale
        adjusted_values.append(adjusted)
    if not adjusted_values:
        return verdict
    probe = max(known, key=lambda s: s.history).describe()
    return explain(verdict, rejudge(statistics.median(adjusted_values)), ratio, probe)


def judge_night(
    tonight: Night,
    restart: Restart,
    metric: str,
    settings: DetectorSettings,
    speeds: HostSpeeds,
) -> list[tuple[Verdict, dict[str, Any]]]:
    """The verdicts of one metric for one night: the night verdict, and during the first
    nights after a restart the upgrade verdict; each with its details."""
    value = tonight.value(metric)
    if value is None:
        return []
    current = [n for n in reversed(restart.current) if n.value(metric) is not None]
    history = [n.value(metric) for n in current]
    noise = _median([n.noise(metric) for n in current[-settings.lookback :]])

    def night_verdict(v: float) -> Verdict:
        return judge(metric, v, history, settings, noise=noise)  # type: ignore[arg-type]

    verdict = _explained(night_verdict(value), metric, tonight, speeds, settings, night_verdict)
    shortly_after = max(settings.min_history, settings.upgrade_nights)
    if restart.change is not None and len(restart.current) < shortly_after:
        prefix = f"history restarted at {restart.change}"
        if not restart.compare:
            prefix += " (marked: no comparison with the nights before)"
        verdict = _with_reason(verdict, f"{prefix}; {verdict.reason}")
    details = {**restart.details, "noise": noise, "scale": verdict.scale}
    out = [(verdict, details)]

    after_nights = len(restart.current) + 1
    if restart.change is None or not restart.compare or after_nights > settings.upgrade_nights:
        return out
    before = [n for n in reversed(restart.previous) if n.value(metric) is not None]
    before_values = [n.value(metric) for n in before]
    before_noise = _median([n.noise(metric) for n in before[-settings.lookback :]])
    after_values = [*history, value]

    def upgrade_verdict(v: float) -> Verdict:
        return judge_upgrade(
            metric,
            [*history, v],
            before_values,  # type: ignore[arg-type]
            settings,
            restart.change or "",
            noise=before_noise,
        )

    upgrade = _explained(
        judge_upgrade(
            metric,
            after_values,  # type: ignore[arg-type]
            before_values,  # type: ignore[arg-type]
            settings,
            restart.change,
            noise=before_noise,
        ),
        metric,
        tonight,
        speeds,
        settings,
        upgrade_verdict,
    )
    details = {
        **restart.details,
        "noise": before_noise,
        "scale": upgrade.scale,
        "nights_after": len(after_values),
        "nights_before": min(len(before_values), settings.lookback),
    }
    out.append((upgrade, details))
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _with_reason(verdict: Verdict, reason: str) -> Verdict:
    return replace(verdict, reason=reason)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def detect_in_session(
    session: Session,
    run_pk: int,
    settings: DetectorSettings,
    metrics: Sequence[str],
    done: set[tuple[NightId, str]] | None = None,
) -> list[Verdict]:
    """Judge the nights of run `run_pk` (its DAG run, every comparability key its scenarios
    have) on `metrics`, pooling the night's repetitions; store and return the verdicts.
    `done` collects the (night, key) pairs judged, so a caller judging several runs of one
    night judges each key once."""
    for metric in metrics:
        metric_column(metric)
    run = session.get(Run, run_pk)
    if run is None:
        raise EmbenchError(f"no stored run {run_pk}")
    ident = night_id(run.dag_id, run.dag_run_id, run.id)
    keys = session.scalars(
        sa.select(ScenarioRow.comparability_key)
        .where(ScenarioRow.run_pk == run_pk)
        .distinct()
        .order_by(ScenarioRow.comparability_key)
    ).all()
    done = done if done is not None else set()
    speeds = HostSpeeds(session, settings.host_min_history)
    now = datetime.now(UTC)
    # the previous `confirm_nights - 1` nights, `lookback` baseline nights, and the nights
    # before a restart for the upgrade verdict
    wanted = 2 * settings.lookback + settings.confirm_nights + settings.upgrade_nights
    verdicts: list[Verdict] = []
    for key in keys:
        if (ident, key) in done:
            continue
        done.add((ident, key))
        stmt = (
            _select(metrics)
            .where(ScenarioRow.comparability_key == key, _night_condition(ident))
            .order_by(ScenarioRow.started_at, ScenarioRow.id)
        )
        [tonight] = _nights(session.execute(stmt).all(), metrics)
        session.execute(
            sa.delete(VerdictRow).where(
                VerdictRow.scenario_result_id.in_([r.id for r in tonight.reps])
            )
        )
        if not tonight.usable:
            continue  # an invalid or unstable night is no evidence either way
        holder = max(tonight.usable, key=lambda r: (r.started_at, r.id))
        earlier = earlier_nights(session, key, tonight, metrics, wanted)
        marks = applicable_marks(
            session, holder, run.model, run.variant, run.runtime, tonight.started_at
        )
        restart = split_history(session, tonight, earlier, marks)
        for metric in metrics:
            for verdict, details in judge_night(tonight, restart, metric, settings, speeds):
                verdicts.append(verdict)
                session.add(_row(verdict, details, holder, tonight, settings, now))
    session.flush()
    return verdicts


def _row(
    verdict: Verdict,
    details: dict[str, Any],
    holder: Repetition,
    tonight: Night,
    settings: DetectorSettings,
    now: datetime,
) -> VerdictRow:
    repetitions = len([r for r in tonight.usable if r.values.get(verdict.metric) is not None])
    pooled = f"median of {repetitions} repetitions; " if repetitions > 1 else ""
    return VerdictRow(
        run_pk=holder.run_pk,
        scenario_result_id=holder.id,
        metric=verdict.metric,
        kind=verdict.kind,
        status=verdict.status,
        value=verdict.value,
        direction=verdict.direction.value,
        history_size=verdict.history_size,
        repetitions=repetitions,
        baseline_median=verdict.baseline_median,
        relative_change=_finite(verdict.relative_change),
        z_score=_finite(verdict.z_score),
        reason=f"{holder.name}: {pooled}{verdict.reason}",
        settings=settings.to_dict(),
        details={
            **{k: v for k, v in details.items() if v is not None},
            **({"threshold": verdict.threshold} if verdict.threshold is not None else {}),
            **(
                {"adjusted_value": verdict.adjusted_value, "host_ratio": verdict.host_ratio}
                if verdict.host_ratio is not None
                else {}
            ),
            "repetition_ids": sorted(r.id for r in tonight.usable),
        },
        created_at=now,
    )


# ------------------------------------------------------------------------ entry points


def detect_regressions(
    engine: Engine, run: str | int, settings: DetectorSettings, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Judge a stored run (ingest key, document run_id or primary key) with the other
    repetitions of its night, in its own transaction; returns the night's verdicts as dicts
    with the scenario name (the CLI and ingest path)."""

    def attempt() -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            run_pk = resolve_run(session, run)
            detect_in_session(session, run_pk, settings, metrics)
            return night_verdicts(session, run_pk)

    return with_retries(engine, f"detect {run}", attempt)


def detect_dag_run(
    engine: Engine,
    dag_id: str,
    dag_run_id: str,
    settings: DetectorSettings,
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Judge every comparability key of one DAG run once, pooling its repetitions (the DAG
    calls this after all benchmark groups); returns the verdicts. Nothing stored: []."""

    def attempt() -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            run_pks = session.scalars(
                sa.select(Run.id)
                .where(Run.dag_id == dag_id, Run.dag_run_id == dag_run_id)
                .order_by(Run.started_at, Run.id)
            ).all()
            done: set[tuple[NightId, str]] = set()
            for run_pk in run_pks:
                detect_in_session(session, run_pk, settings, metrics, done)
            return [v for pk in run_pks for v in stored_verdicts(session, pk)]

    return with_retries(engine, f"detect {dag_id}/{dag_run_id}", attempt)


def _verdict_dict(v: VerdictRow, name: str) -> dict[str, Any]:
    return {
        "scenario": name,
        "metric": v.metric,
        "kind": v.kind,
        "status": v.status,
        "value": v.value,
        "direction": v.direction,
        "history_size": v.history_size,
        "repetitions": v.repetitions,
        "baseline_median": v.baseline_median,
        "relative_change": v.relative_change,
        "z_score": v.z_score,
        "reason": v.reason,
        "details": v.details or {},
    }


def _verdicts(session: Session, condition: sa.ColumnElement[bool]) -> list[dict[str, Any]]:
    stmt = (
        sa.select(VerdictRow, ScenarioRow.name)
        .join(ScenarioRow, ScenarioRow.id == VerdictRow.scenario_result_id)
        .join(Run, Run.id == ScenarioRow.run_pk)
        .where(condition)
        .order_by(ScenarioRow.name, VerdictRow.metric, VerdictRow.kind)
    )
    return [_verdict_dict(v, name) for v, name in session.execute(stmt).all()]


def stored_verdicts(session: Session, run_pk: int) -> list[dict[str, Any]]:
    """The verdicts stored on run `run_pk`'s scenario rows (a pooled night's verdicts are on
    its newest repetition only, so reading run by run lists each judgement once)."""
    return _verdicts(session, VerdictRow.run_pk == run_pk)


def night_verdicts(session: Session, run_pk: int) -> list[dict[str, Any]]:
    """The verdicts of the nights run `run_pk` belongs to, for its comparability keys,
    wherever they are stored among the night's repetitions."""
    run = session.get(Run, run_pk)
    if run is None:
        return []
    keys = sa.select(ScenarioRow.comparability_key).where(ScenarioRow.run_pk == run_pk)
    ident = night_id(run.dag_id, run.dag_run_id, run.id)
    return _verdicts(
        session, sa.and_(ScenarioRow.comparability_key.in_(keys), _night_condition(ident))
    )


# The widest key either database stores (a 64-bit signed integer).
MAX_RUN_NUMBER = 2**63 - 1


def run_number(text: str) -> int | None:
    """`text` as a run number, else None: ASCII digits only (str.isdigit() also accepts
    superscripts, which int() refuses, and other scripts' digits, which a run number written
    anywhere in this project never uses), no sign, at most MAX_RUN_NUMBER."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_RUN_NUMBER else None


def resolve_run(session: Session, run: str | int) -> int:
    """The primary key of a run named by ingest key, document run_id, or number."""
    text = str(run)
    for condition in (Run.ingest_key == text, Run.doc_run_id == text):
        found = session.scalars(
            sa.select(Run.id).where(condition).order_by(Run.started_at.desc())
        ).first()
        if found is not None:
            return found
    if (number := run_number(text)) is not None:
        found = session.scalar(sa.select(Run.id).where(Run.id == number))
        if found is not None:
            return found
    raise EmbenchError(f"no stored run {text!r} (give an ingest key, a run_id or a run number)")
