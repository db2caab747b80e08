"""Initial schema: environments, model artifacts, runs, scenario results, verdicts.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON on SQLite, JSONB on PostgreSQL (as embench.store.models.JSONDoc; frozen here).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint_hash", sa.String(length=64), nullable=False),
        sa.Column("hardware_key", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("document", JSON_DOC, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environments")),
        sa.UniqueConstraint("fingerprint_hash", name=op.f("uq_environments_fingerprint_hash")),
    )
    op.create_index(
        op.f("ix_environments_hardware_key"), "environments", ["hardware_key"], unique=False
    )

    op.create_table(
        "model_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("parity", JSON_DOC, nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_artifacts")),
        sa.UniqueConstraint("manifest_sha256", name=op.f("uq_model_artifacts_manifest_sha256")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ingest_key", sa.String(length=512), nullable=False),
        sa.Column("doc_run_id", sa.String(length=256), nullable=False),
        sa.Column("dag_id", sa.String(length=256), nullable=True),
        sa.Column("dag_run_id", sa.String(length=256), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("try_number", sa.Integer(), nullable=True),
        sa.Column("trigger_kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("git_sha", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("runtime", sa.String(length=64), nullable=True),
        sa.Column("runtime_version", sa.String(length=64), nullable=True),
        sa.Column("server_version", sa.String(length=64), nullable=True),
        sa.Column("model_load_ms", sa.Double(), nullable=True),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("server_config", JSON_DOC, nullable=False),
        sa.Column("server_config_key", sa.String(length=64), nullable=False),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("image_digest", sa.Text(), nullable=True),
        sa.Column("schema_version", sa.String(length=16), nullable=False),
        sa.Column("baseline_key", sa.String(length=64), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=True),
        sa.Column("labels", JSON_DOC, nullable=False),
        sa.Column("document", JSON_DOC, nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "trigger_kind IN ('scheduled', 'manual', 'cli')", name=op.f("ck_runs_trigger_kind")
        ),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["model_artifacts.id"],
            name=op.f("fk_runs_artifact_id_model_artifacts"),
        ),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_runs_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("ingest_key", name=op.f("uq_runs_ingest_key")),
    )
    op.create_index(op.f("ix_runs_doc_run_id"), "runs", ["doc_run_id"], unique=False)
    op.create_index(op.f("ix_runs_environment_id"), "runs", ["environment_id"], unique=False)
    op.create_index(
        "ix_runs_model_variant_started_at", "runs", ["model", "variant", "started_at"], unique=False
    )
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"], unique=False)

    op.create_table(
        "scenario_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("runtime", sa.String(length=64), nullable=True),
        sa.Column("baseline_key", sa.String(length=64), nullable=False),
        sa.Column("params", JSON_DOC, nullable=False),
        sa.Column("definition", JSON_DOC, nullable=False),
        sa.Column("warmup", JSON_DOC, nullable=False),
        sa.Column("stability_params", JSON_DOC, nullable=False),
        sa.Column("flags", JSON_DOC, nullable=False),
        sa.Column("errors", JSON_DOC, nullable=False),
        sa.Column("error_samples", JSON_DOC, nullable=False),
        sa.Column("windows", JSON_DOC, nullable=False),
        sa.Column("histogram", JSON_DOC, nullable=True),
        sa.Column("resource_samples", JSON_DOC, nullable=False),
        sa.Column("server_metrics_delta", JSON_DOC, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("definition_key", sa.String(length=64), nullable=False),
        sa.Column("comparability_key", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("measure_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("warmup_requests", sa.BigInteger(), nullable=False),
        sa.Column("warmup_duration_s", sa.Double(), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("drain_s", sa.Double(), nullable=False),
        sa.Column("stop_reason", sa.String(length=32), nullable=False),
        sa.Column("trials", sa.BigInteger(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("stable", sa.Boolean(), nullable=False),
        sa.Column("stability_reason", sa.Text(), nullable=False),
        sa.Column("qps_spread", sa.Double(), nullable=True),
        sa.Column("p99_spread", sa.Double(), nullable=True),
        sa.Column("requests_sent", sa.BigInteger(), nullable=False),
        sa.Column("requests_ok", sa.BigInteger(), nullable=False),
        sa.Column("requests_failed", sa.BigInteger(), nullable=False),
        sa.Column("requests_cancelled", sa.BigInteger(), nullable=False),
        sa.Column("error_rate", sa.Double(), nullable=False),
        sa.Column("qps", sa.Double(), nullable=False),
        sa.Column("texts_per_s", sa.Double(), nullable=False),
        sa.Column("tokens_per_s", sa.Double(), nullable=False),
        sa.Column("server_tokens_per_s", sa.Double(), nullable=True),
        sa.Column("target_rate", sa.Double(), nullable=True),
        sa.Column("send_rate", sa.Double(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False),
        sa.Column("min_ms", sa.Double(), nullable=True),
        sa.Column("max_ms", sa.Double(), nullable=True),
        sa.Column("mean_ms", sa.Double(), nullable=True),
        sa.Column("stddev_ms", sa.Double(), nullable=True),
        sa.Column("p50_ms", sa.Double(), nullable=True),
        sa.Column("p90_ms", sa.Double(), nullable=True),
        sa.Column("p95_ms", sa.Double(), nullable=True),
        sa.Column("p99_ms", sa.Double(), nullable=True),
        sa.Column("p999_ms", sa.Double(), nullable=True),
        sa.Column("service_p50_ms", sa.Double(), nullable=True),
        sa.Column("service_p99_ms", sa.Double(), nullable=True),
        sa.Column("service_max_ms", sa.Double(), nullable=True),
        sa.Column("lag_mean_ms", sa.Double(), nullable=True),
        sa.Column("lag_p50_ms", sa.Double(), nullable=True),
        sa.Column("lag_p99_ms", sa.Double(), nullable=True),
        sa.Column("lag_max_ms", sa.Double(), nullable=True),
        sa.Column("server_timing_responses", sa.BigInteger(), nullable=False),
        sa.Column("server_tokenization_mean_ms", sa.Double(), nullable=True),
        sa.Column("server_tokenization_p50_ms", sa.Double(), nullable=True),
        sa.Column("server_tokenization_p99_ms", sa.Double(), nullable=True),
        sa.Column("server_queue_mean_ms", sa.Double(), nullable=True),
        sa.Column("server_queue_p50_ms", sa.Double(), nullable=True),
        sa.Column("server_queue_p99_ms", sa.Double(), nullable=True),
        sa.Column("server_inference_mean_ms", sa.Double(), nullable=True),
        sa.Column("server_inference_p50_ms", sa.Double(), nullable=True),
        sa.Column("server_inference_p99_ms", sa.Double(), nullable=True),
        sa.Column("server_total_mean_ms", sa.Double(), nullable=True),
        sa.Column("server_total_p50_ms", sa.Double(), nullable=True),
        sa.Column("server_total_p99_ms", sa.Double(), nullable=True),
        sa.Column("inflight_max", sa.BigInteger(), nullable=False),
        sa.Column("inflight_mean", sa.Double(), nullable=True),
        sa.Column("resource_source", sa.String(length=32), nullable=True),
        sa.Column("server_cpu_pct_mean", sa.Double(), nullable=True),
        sa.Column("server_cpu_pct_max", sa.Double(), nullable=True),
        sa.Column("server_rss_bytes_mean", sa.Double(), nullable=True),
        sa.Column("server_rss_bytes_max", sa.BigInteger(), nullable=True),
        sa.Column("client_cpu_pct_mean", sa.Double(), nullable=True),
        sa.Column("client_cpu_pct_max", sa.Double(), nullable=True),
        sa.Column("client_saturated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"],
            ["runs.id"],
            name=op.f("fk_scenario_results_run_pk_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenario_results")),
        sa.UniqueConstraint("run_pk", "name", name=op.f("uq_scenario_results_run_pk_name")),
    )
    op.create_index(
        "ix_scenario_results_history",
        "scenario_results",
        ["comparability_key", "baseline_key", "started_at"],
        unique=False,
    )
    op.create_index(
        "ix_scenario_results_model_scenario",
        "scenario_results",
        ["model", "variant", "name", "started_at"],
        unique=False,
    )

    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("scenario_result_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("direction", sa.String(length=32), nullable=False),
        sa.Column("history_size", sa.Integer(), nullable=False),
        sa.Column("baseline_median", sa.Double(), nullable=True),
        sa.Column("relative_change", sa.Double(), nullable=True),
        sa.Column("z_score", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('improved', 'unchanged', 'regressed', 'no_baseline')",
            name=op.f("ck_verdicts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_verdicts_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scenario_result_id"],
            ["scenario_results.id"],
            name=op.f("fk_verdicts_scenario_result_id_scenario_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
        sa.UniqueConstraint(
            "scenario_result_id", "metric", name=op.f("uq_verdicts_scenario_result_id_metric")
        ),
    )
    op.create_index(op.f("ix_verdicts_run_pk"), "verdicts", ["run_pk"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_verdicts_run_pk"), table_name="verdicts")

    op.drop_table("verdicts")
    op.drop_index("ix_scenario_results_model_scenario", table_name="scenario_results")
    op.drop_index("ix_scenario_results_history", table_name="scenario_results")

    op.drop_table("scenario_results")
    op.drop_index(op.f("ix_runs_started_at"), table_name="runs")
    op.drop_index("ix_runs_model_variant_started_at", table_name="runs")
    op.drop_index(op.f("ix_runs_environment_id"), table_name="runs")
    op.drop_index(op.f("ix_runs_doc_run_id"), table_name="runs")

    op.drop_table("runs")
    op.drop_table("model_artifacts")
    op.drop_index(op.f("ix_environments_hardware_key"), table_name="environments")

    op.drop_table("environments")
