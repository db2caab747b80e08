"""Load 100,000 scenario results into a throwaway PostgreSQL database, time a one-key
history query (median of repeats) and print its plan. Goal: < 50 ms.

    .venv/bin/python bench/store_history_query.py [--rows 100000] [--admin-url URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from client.result import stable_hash
from embench.store.db import make_engine, session_scope, upgrade_to_head
from embench.store.models import NUMERIC_FIELDS, Environment, Run, ScenarioRow
from embench.store.queries import metric_history

T0 = datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
SCENARIOS = [f"closed-c{c}" for c in (1, 2, 4, 8, 16)] + [f"open-r{r}" for r in (50, 100, 200)]
VARIANTS = ["fp32", "optimized", "int8", "torch"]


def load(engine: sa.Engine, rows: int, models: int) -> tuple[str, str]:
    """Bulk insert: `rows` scenario results over models x variants x scenarios x nights."""
    per_night = models * len(VARIANTS) * len(SCENARIOS)
    nights = max(1, rows // per_night)
    rng = random.Random(0)
    with session_scope(engine) as s:
        env = Environment(
            fingerprint_hash="e" * 64,
            hardware_key="h" * 64,
            hostname="bench",
            document={},
            first_seen=T0,
        )
        s.add(env)
        s.flush()
        env_id = env.id
    run_rows, keys = [], {}
    for night in range(nights):
        for m in range(models):
            for variant in VARIANTS:
                run_rows.append(
                    {
                        "ingest_key": f"dag/scheduled__{night}/{m}-{variant}",
                        "doc_run_id": uuid.uuid4().hex,
                        "trigger_kind": "scheduled",
                        "status": "complete",
                        "valid": True,
                        "started_at": T0 + timedelta(days=night),
                        "ingested_at": T0,
                        "model": f"model-{m}",
                        "variant": variant,
                        "runtime": "onnxruntime",
                        "server_config": {},
                        "server_config_key": "s" * 64,
                        "schema_version": "1.0",
                        "baseline_key": "b" * 64,
                        "environment_id": env_id,
                        "labels": {},
                        "document": {},
                    }
                )
    with engine.begin() as conn:
        ids = conn.execute(
            sa.insert(Run).returning(Run.id, Run.model, Run.variant, Run.started_at),
            run_rows,
        ).all()
    zero = dict.fromkeys(NUMERIC_FIELDS)
    batch: list[dict[str, object]] = []
    inserted = 0
    started = time.perf_counter()
    for run_pk, model, variant, run_started in ids:
        for i, name in enumerate(SCENARIOS):
            key = keys.setdefault((model, variant, name), stable_hash([model, variant, name]))
            t = run_started + timedelta(minutes=i)
            batch.append(
                {
                    **zero,
                    "run_pk": run_pk,
                    "model": model,
                    "variant": variant,
                    "runtime": "onnxruntime",
                    "baseline_key": "b" * 64,
                    "name": name,
                    "status": "complete",
                    "definition_key": "d" * 64,
                    "comparability_key": key,
                    "started_at": t,
                    "measure_started_at": t,
                    "finished_at": t,
                    "stop_reason": "min_reached",
                    "valid": True,
                    "stable": True,
                    "stability_reason": "",
                    "client_saturated": False,
                    "warmup_requests": 50,
                    "warmup_duration_s": 5.0,
                    "duration_s": 15.0,
                    "drain_s": 0.0,
                    "trials": 1,
                    "requests_sent": 1000,
                    "requests_ok": 1000,
                    "requests_failed": 0,
                    "requests_cancelled": 0,
                    "error_rate": 0.0,
                    "qps": rng.gauss(100, 2),
                    "texts_per_s": 100.0,
                    "tokens_per_s": 3200.0,
                    "send_rate": 100.0,
                    "latency_count": 1000,
                    "p99_ms": rng.gauss(20, 0.5),
                    "server_timing_responses": 1000,
                    "inflight_max": 4,
                    "params": {},
                    "definition": {},
                    "warmup": {},
                    "stability_params": {},
                    "flags": [],
                    "errors": {},
                    "error_samples": {},
                    "windows": [],
                    "histogram": None,
                    "resource_samples": [],
                    "server_metrics_delta": {},
                }
            )
            if len(batch) == 5000:
                with engine.begin() as conn:
                    conn.execute(sa.insert(ScenarioRow), batch)
                inserted += len(batch)
                batch = []
    if batch:
        with engine.begin() as conn:
            conn.execute(sa.insert(ScenarioRow), batch)
        inserted += len(batch)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    print(
        f"loaded {inserted} scenario results ({len(ids)} runs, {nights} nights, "
        f"{len(keys)} keys) in {time.perf_counter() - started:.1f}s"
    )
    return "model-0", keys[("model-0", "fp32", "closed-c4")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"embench_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(sa.make_url(args.admin_url).set(database=name).render_as_string(False))
    try:
        upgrade_to_head(engine)
        model, key = load(engine, args.rows, args.models)
        query = {"model": model, "variant": "fp32", "scenario": "closed-c4"}
        for label, kwargs in (
            ("model/variant/scenario", query),
            ("comparability key", {**query, "comparability_key": key}),
        ):
            times = []
            with session_scope(engine) as session:
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    points = metric_history(session, "p99_ms", **kwargs)
                    times.append((time.perf_counter() - t) * 1000)
            print(
                f"history ({label}): {len(points)} points, median {statistics.median(times):.2f} ms"
                f", p90 {sorted(times)[int(0.9 * len(times))]:.2f} ms over {args.repeats} runs "
                f"(goal < 50 ms)"
            )
        # The plan of the same statement the library builds, with its bound parameters.
        from embench.store import queries

        captured: list[sa.Select] = []
        real_execute = sa.orm.Session.execute

        def capture(self: sa.orm.Session, stmt: sa.Select, *a: object, **k: object) -> object:
            captured.append(stmt)
            return real_execute(self, stmt, *a, **k)

        sa.orm.Session.execute = capture  # type: ignore[method-assign]
        with session_scope(engine) as session:
            queries.metric_history(session, "p99_ms", **query, comparability_key=key)
        sa.orm.Session.execute = real_execute  # type: ignore[method-assign]
        compiled = captured[0].compile(engine)
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), compiled.params
            ).scalars()
            print("plan:\n  " + "\n  ".join(plan))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
