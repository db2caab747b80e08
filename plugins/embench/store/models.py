"""The results schema (SQLAlchemy 2 typed ORM).

Every scalar statistic of `client.result.ScenarioResult` is a column of `scenario_results`;
the column list is derived from the pydantic model (`SCALAR_FIELDS`), so the result schema
stays the one source of truth. The Alembic migrations are explicit files all the same, and a
test checks that they produce exactly this metadata.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from client.result import ScenarioResult

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite, JSONB on PostgreSQL.
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
UTCDateTime = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _column_type(annotation: Any) -> sa.types.TypeEngine[Any] | None:
    """The column type of a scalar pydantic field annotation; None for non-scalars."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _column_type(inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        return sa.String(32) if all(isinstance(a, str) for a in args) else None
    if annotation is bool:
        return sa.Boolean()
    if annotation is int:
        return sa.BigInteger()
    if annotation is float:
        return sa.Double()
    if annotation is str:
        return sa.Text()
    if annotation is datetime:
        return UTCDateTime
    return None


def _scalar_fields() -> dict[str, sa.types.TypeEngine[Any]]:
    fields: dict[str, sa.types.TypeEngine[Any]] = {}
    for name, info in ScenarioResult.model_fields.items():
        column_type = _column_type(info.annotation)
        if column_type is not None:
            fields[name] = column_type
    return fields


# Scalar fields of ScenarioResult -> column type. Keys stay short strings for indexing.
SCALAR_FIELDS: dict[str, sa.types.TypeEngine[Any]] = _scalar_fields()
SCALAR_FIELDS.update(name=sa.String(64), definition_key=sa.String(64))
SCALAR_FIELDS.update(comparability_key=sa.String(64))
# Nullable: a field whose annotation admits None (or has a default).
NULLABLE_FIELDS: frozenset[str] = frozenset(
    name
    for name, info in ScenarioResult.model_fields.items()
    if type(None) in typing.get_args(info.annotation) or not info.is_required()
)
# Numeric statistics: the metrics a history, a comparison or a detector can ask for.
NUMERIC_FIELDS: tuple[str, ...] = tuple(
    name
    for name, column_type in SCALAR_FIELDS.items()
    if isinstance(column_type, sa.BigInteger | sa.Double)
)
# Non-scalar fields kept as JSON documents.
JSON_FIELDS: tuple[str, ...] = tuple(
    name for name in ScenarioResult.model_fields if name not in SCALAR_FIELDS
)


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    hardware_key: Mapped[str] = mapped_column(sa.String(64), index=True)
    hostname: Mapped[str] = mapped_column(sa.Text)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelArtifact(Base):
    __tablename__ = "model_artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    manifest_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    model: Mapped[str | None] = mapped_column(sa.Text)
    variant: Mapped[str | None] = mapped_column(sa.String(64))
    parity: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class Run(Base):
    """One result document: one client run against one model variant."""

    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_model_variant_started_at", "model", "variant", "started_at"),
        # the repetitions of one DAG run are one night for the detector
        sa.Index("ix_runs_dag_id_dag_run_id", "dag_id", "dag_run_id"),
        sa.CheckConstraint("trigger_kind IN ('scheduled', 'manual', 'cli')", name="trigger_kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # dag_id/run_id/map_index when the labels carry them, else the document's run_id.
    ingest_key: Mapped[str] = mapped_column(sa.String(512), unique=True)
    doc_run_id: Mapped[str] = mapped_column(sa.String(256), index=True)
    dag_id: Mapped[str | None] = mapped_column(sa.String(256))
    dag_run_id: Mapped[str | None] = mapped_column(sa.String(256))
    map_index: Mapped[int | None] = mapped_column(sa.Integer)
    try_number: Mapped[int | None] = mapped_column(sa.Integer)
    trigger_kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16))
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    valid: Mapped[bool] = mapped_column(sa.Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    git_sha: Mapped[str | None] = mapped_column(sa.String(64))
    model: Mapped[str | None] = mapped_column(sa.String(256))
    variant: Mapped[str | None] = mapped_column(sa.String(64))
    runtime: Mapped[str | None] = mapped_column(sa.String(64))
    runtime_version: Mapped[str | None] = mapped_column(sa.String(64))
    server_version: Mapped[str | None] = mapped_column(sa.String(64))
    model_load_ms: Mapped[float | None] = mapped_column(sa.Double)
    threads: Mapped[int | None] = mapped_column(sa.Integer)
    server_config: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    server_config_key: Mapped[str] = mapped_column(sa.String(64))
    image: Mapped[str | None] = mapped_column(sa.Text)
    image_digest: Mapped[str | None] = mapped_column(sa.Text)
    schema_version: Mapped[str] = mapped_column(sa.String(16))
    # hash of what can change the server's speed besides the comparability key: runtime
    # version, server libraries (runtime, tokenizer), model artifact (embench.store.ingest.
    # baseline_key). A change starts a new baseline within a comparability key.
    baseline_key: Mapped[str] = mapped_column(sa.String(64))
    environment_id: Mapped[int] = mapped_column(sa.ForeignKey("environments.id"), index=True)
    artifact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_artifacts.id"))
    labels: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    # metadata, client and notes as stored (the document minus its scenarios)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    source_path: Mapped[str | None] = mapped_column(sa.Text)


# A declarative mixin holding one column per scalar statistic of ScenarioResult.
_ScenarioStatistics: type = type(
    "_ScenarioStatistics",
    (),
    {
        name: mapped_column(column_type, nullable=name in NULLABLE_FIELDS)
        for name, column_type in SCALAR_FIELDS.items()
    },
)


class ScenarioRow(_ScenarioStatistics, Base):
    """One ScenarioResult: every scalar statistic a column (added below), the rest JSON."""

    __tablename__ = "scenario_results"
    __table_args__ = (
        sa.UniqueConstraint("run_pk", "name"),
        # The history query: one key, one baseline, ordered by time.
        sa.Index(
            "ix_scenario_results_history",
            "comparability_key",
            "baseline_key",
            "started_at",
        ),
        sa.Index(
            "ix_scenario_results_model_scenario",
            "model",
            "variant",
            "name",
            "started_at",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    # denormalized from the run so the history index covers the query
    model: Mapped[str | None] = mapped_column(sa.String(256))
    variant: Mapped[str | None] = mapped_column(sa.String(64))
    runtime: Mapped[str | None] = mapped_column(sa.String(64))
    baseline_key: Mapped[str] = mapped_column(sa.String(64))
    # non-scalar fields of ScenarioResult, as JSON
    params: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    warmup: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    stability_params: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    flags: Mapped[list[Any]] = mapped_column(JSONDoc)
    errors: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    error_samples: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    windows: Mapped[list[Any]] = mapped_column(JSONDoc)
    histogram: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    resource_samples: Mapped[list[Any]] = mapped_column(JSONDoc)
    server_metrics_delta: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    search_probes: Mapped[list[Any]] = mapped_column(JSONDoc)  # search mode's probes
    percentile_notes: Mapped[dict[str, Any]] = mapped_column(JSONDoc)  # why a pXX is None


_missing_json = set(JSON_FIELDS) - set(ScenarioRow.__table__.columns.keys())
assert not _missing_json, f"ScenarioResult fields with no column: {sorted(_missing_json)}"


VERDICT_STATUSES = ("improved", "unchanged", "regressed", "no_baseline", "explained")
VERDICT_KINDS = ("night", "upgrade")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class VerdictRow(Base):
    """A regression verdict for one metric of one night of a comparability key: "night" (the
    night against its baseline) or "upgrade" (the first nights after a restart of the history
    against the last nights before it). The repetitions of a night are judged once; the
    verdict is stored on the scenario row of the night's newest usable repetition."""

    __tablename__ = "verdicts"
    __table_args__ = (
        sa.UniqueConstraint("scenario_result_id", "metric", "kind"),
        sa.CheckConstraint(f"status IN ({_in(VERDICT_STATUSES)})", name="status"),
        sa.CheckConstraint(f"kind IN ({_in(VERDICT_KINDS)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    scenario_result_id: Mapped[int] = mapped_column(
        sa.ForeignKey("scenario_results.id", ondelete="CASCADE")
    )
    metric: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16), server_default="night")
    status: Mapped[str] = mapped_column(sa.String(16))
    value: Mapped[float] = mapped_column(sa.Double)
    direction: Mapped[str] = mapped_column(sa.String(32))
    history_size: Mapped[int] = mapped_column(sa.Integer)
    # repetitions of the night pooled into `value` (their median)
    repetitions: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    baseline_median: Mapped[float | None] = mapped_column(sa.Double)
    relative_change: Mapped[float | None] = mapped_column(sa.Double)
    z_score: Mapped[float | None] = mapped_column(sa.Double)
    reason: Mapped[str] = mapped_column(sa.Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    # scale, threshold, noise floor, host adjustment, what changed: the numbers behind it
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BaselineMark(Base):
    """A deliberate change marked by hand (`embench baseline mark`): nights before
    `marked_at` are no baseline for the results it applies to (a model, optionally narrowed
    to a variant, runtime and scenario); with `compare`, the first nights after it are
    compared with the nights before (an upgrade verdict)."""

    __tablename__ = "baseline_marks"
    __table_args__ = (sa.Index("ix_baseline_marks_model_marked_at", "model", "marked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(256))
    variant: Mapped[str | None] = mapped_column(sa.String(64))
    runtime: Mapped[str | None] = mapped_column(sa.String(64))
    scenario: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.Text)
    compare: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(sa.Text)
