"""Defensible numbers (issue 14): verdict kinds, "explained" verdicts, pooled repetitions,
baseline marks, the repetitions index, and baseline keys that restart a history only when
the server's speed can change.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON on SQLite, JSONB on PostgreSQL (as embench.store.models.JSONDoc; frozen here).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

OLD_STATUSES = "status IN ('improved', 'unchanged', 'regressed', 'no_baseline')"
NEW_STATUSES = "status IN ('improved', 'unchanged', 'regressed', 'no_baseline', 'explained')"


def _hash(doc: Any) -> str:
    # client.result.stable_hash, frozen: a migration must not change with the code.
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _new_baseline_key(document: dict[str, Any]) -> str:
    """embench.store.ingest.baseline_key as of this revision: runtime version, server
    libraries and model artifact; client libraries no longer restart a history."""
    meta = document.get("metadata") or {}
    return _hash(
        {
            "runtime_version": meta.get("runtime_version"),
            "server_libraries": meta.get("server_library_versions") or {},
            "manifest_sha256": meta.get("manifest_sha256"),
        }
    )


def _old_baseline_key(document: dict[str, Any]) -> str:
    """The 0001 formula: client and server library versions."""
    return _hash(
        {
            "client": (document.get("environment") or {}).get("libraries") or {},
            "server": (document.get("metadata") or {}).get("server_library_versions") or {},
        }
    )


def _rekey(formula: Any) -> None:
    """Recompute every stored baseline key from the run's document (the result minus its
    scenarios), so stored histories follow the formula of this revision."""
    bind = op.get_bind()
    runs = sa.table("runs", sa.column("id"), sa.column("document", JSON_DOC))
    keyed = sa.table("runs", sa.column("id"), sa.column("baseline_key"))
    scenarios = sa.table("scenario_results", sa.column("run_pk"), sa.column("baseline_key"))
    for run_id, document in bind.execute(sa.select(runs.c.id, runs.c.document)).all():
        doc = json.loads(document) if isinstance(document, str) else document or {}
        key = formula(doc)
        bind.execute(sa.update(keyed).where(keyed.c.id == run_id).values(baseline_key=key))
        bind.execute(
            sa.update(scenarios).where(scenarios.c.run_pk == run_id).values(baseline_key=key)
        )


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), server_default="night", nullable=False)
        )
        batch.add_column(sa.Column("repetitions", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("details", JSON_DOC, nullable=True))
        batch.drop_constraint(op.f("uq_verdicts_scenario_result_id_metric"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_verdicts_scenario_result_id_metric_kind"),
            ["scenario_result_id", "metric", "kind"],
        )
        batch.drop_constraint(op.f("ck_verdicts_status"), type_="check")
        batch.create_check_constraint(op.f("ck_verdicts_status"), NEW_STATUSES)
        batch.create_check_constraint(op.f("ck_verdicts_kind"), "kind IN ('night', 'upgrade')")

    op.create_index("ix_runs_dag_id_dag_run_id", "runs", ["dag_id", "dag_run_id"], unique=False)

    op.create_table(
        "baseline_marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("runtime", sa.String(length=64), nullable=True),
        sa.Column("scenario", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("compare", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_baseline_marks")),
    )
    op.create_index(
        "ix_baseline_marks_model_marked_at",
        "baseline_marks",
        ["model", "marked_at"],
        unique=False,
    )
    # scenario_results: the result schema's new fields (client.result.ScenarioResult)
    with op.batch_alter_table("scenario_results") as batch:
        for column in _scenario_columns():
            batch.add_column(column)
    _rekey(_new_baseline_key)


def _scenario_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("search_probes", JSON_DOC, server_default="[]", nullable=False),
        sa.Column("search_over", sa.String(length=32), nullable=True),
        sa.Column("peak_load", sa.Double(), nullable=True),
        sa.Column("peak_qps", sa.Double(), nullable=True),
        sa.Column("search_reason", sa.Text(), nullable=True),
        sa.Column("percentile_notes", JSON_DOC, server_default="{}", nullable=False),
        sa.Column("window_s", sa.Double(), nullable=True),
        sa.Column("stable_windows", sa.BigInteger(), nullable=True),
        sa.Column("figures_from_s", sa.Double(), nullable=True),
        sa.Column("success_count", sa.BigInteger(), nullable=True),
        sa.Column("success_p50_ms", sa.Double(), nullable=True),
        sa.Column("success_p90_ms", sa.Double(), nullable=True),
        sa.Column("success_p95_ms", sa.Double(), nullable=True),
        sa.Column("success_p99_ms", sa.Double(), nullable=True),
        sa.Column("success_p999_ms", sa.Double(), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("p50_ci_low_ms", sa.Double(), nullable=True),
        sa.Column("p50_ci_high_ms", sa.Double(), nullable=True),
        sa.Column("p90_ci_low_ms", sa.Double(), nullable=True),
        sa.Column("p90_ci_high_ms", sa.Double(), nullable=True),
        sa.Column("p95_ci_low_ms", sa.Double(), nullable=True),
        sa.Column("p95_ci_high_ms", sa.Double(), nullable=True),
        sa.Column("p99_ci_low_ms", sa.Double(), nullable=True),
        sa.Column("p99_ci_high_ms", sa.Double(), nullable=True),
        sa.Column("p999_ci_low_ms", sa.Double(), nullable=True),
        sa.Column("p999_ci_high_ms", sa.Double(), nullable=True),
        sa.Column("qps_ci_low", sa.Double(), nullable=True),
        sa.Column("qps_ci_high", sa.Double(), nullable=True),
        sa.Column("requests_scheduled", sa.BigInteger(), nullable=True),
        sa.Column("requests_dropped", sa.BigInteger(), nullable=True),
        sa.Column("loop_lag_p99_ms", sa.Double(), nullable=True),
        sa.Column("loop_lag_max_ms", sa.Double(), nullable=True),
        sa.Column("slo_p99_ms", sa.Double(), nullable=True),
        sa.Column("goodput_per_s", sa.Double(), nullable=True),
        sa.Column("slo_met", sa.Boolean(), nullable=True),
        sa.Column("client_tokens_per_s", sa.Double(), nullable=True),
    ]


def downgrade() -> None:
    _rekey(_old_baseline_key)
    with op.batch_alter_table("scenario_results") as batch:
        for column in reversed(_scenario_columns()):
            batch.drop_column(column.name)
    op.drop_index("ix_baseline_marks_model_marked_at", table_name="baseline_marks")
    op.drop_table("baseline_marks")
    op.drop_index("ix_runs_dag_id_dag_run_id", table_name="runs")
    # verdicts the old schema cannot hold: explained ones and the second kind
    op.execute("DELETE FROM verdicts WHERE kind <> 'night' OR status = 'explained'")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_constraint(op.f("ck_verdicts_kind"), type_="check")
        batch.drop_constraint(op.f("ck_verdicts_status"), type_="check")
        batch.create_check_constraint(op.f("ck_verdicts_status"), OLD_STATUSES)
        batch.drop_constraint(op.f("uq_verdicts_scenario_result_id_metric_kind"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_verdicts_scenario_result_id_metric"), ["scenario_result_id", "metric"]
        )
        batch.drop_column("details")
        batch.drop_column("repetitions")
        batch.drop_column("kind")
