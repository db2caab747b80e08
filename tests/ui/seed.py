"""Seeded history for the UI tests and the screenshots: nightly pipeline runs of two
variants over three closed-loop concurrencies, with a runtime upgrade (a baseline change)
and a p99 regression on the last night of fp32, plus a model whose name is an XSS probe."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import Engine

from client.result import RunResult, ScenarioResult, ValidityFlag, comparability_key
from embench.regression import DetectorSettings
from embench.store.ingest import ingest_result
from tests.store.factory import MODEL, run_result

DAG_ID = "embedding_benchmark"
XSS_MODEL = "<script>alert(1)</script>"
# a single night may decide here (off by default): the seed regresses on its last night only
SETTINGS = DetectorSettings(z_threshold=5.0)
METRICS = ["qps", "p99_ms"]
CONCURRENCY = {"closed-c1": 1, "closed-c4": 4, "closed-c16": 16}
VARIANTS = {"fp32": (210.0, 12.0), "int8": (280.0, 9.0)}  # qps and p99 at concurrency 1


@dataclass
class Seeded:
    nights: int
    upgrade_night: int
    regression_night: int
    last_dag_run: str
    xss_dag_run: str
    keys: dict[str, list[str]] = field(default_factory=dict)  # dag run id -> ingest keys


def dag_run_id(night: int) -> str:
    return f"scheduled__2026-01-{night + 1:02d}T02:00:00+00:00"


def _at_concurrency(result: RunResult, qps1: float, p99_1: float, rng: random.Random) -> None:
    """Give each scenario its concurrency (the factory knows only c1/c4) and figures that
    scale with it: QPS saturating, latency growing."""
    scenarios: list[ScenarioResult] = []
    meta = result.metadata
    for scenario in result.scenarios:
        c = CONCURRENCY[scenario.name]
        definition = scenario.definition.model_copy(update={"concurrency": c})
        params = scenario.params.model_copy(update={"concurrency": c})
        key = definition.key()
        qps = qps1 * min(c, 2.2) ** 0.8 * rng.gauss(1.0, 0.01)
        p99 = p99_1 * (1 + 0.45 * (c - 1)) * rng.gauss(1.0, 0.01)
        scenarios.append(
            scenario.model_copy(
                update={
                    "definition": definition,
                    "params": params,
                    "definition_key": key,
                    "comparability_key": comparability_key(
                        meta.model,
                        meta.variant,
                        meta.runtime,
                        key,
                        meta.server_config_key,
                        result.environment.hardware_key,
                    ),
                    "qps": qps,
                    "texts_per_s": qps,
                    "p50_ms": p99 / 4,
                    "p95_ms": p99 * 0.8,
                    "p99_ms": p99,
                    "p999_ms": p99 * 1.2,
                }
            )
        )
    result.scenarios = scenarios


def seed_history(engine: Engine, nights: int = 14) -> Seeded:
    """`nights` nightly runs (fp32 map index 0, int8 map index 1); a library upgrade from
    night nights//2 (a new baseline), p99 +40 % for fp32 on the last night; then one manual
    run of a model named like an XSS probe."""
    rng = random.Random(8)
    seeded = Seeded(
        nights=nights,
        upgrade_night=nights // 2,
        regression_night=nights - 1,
        last_dag_run=dag_run_id(nights - 1),
        xss_dag_run="manual__xss",
    )
    for night in range(nights):
        # a server-side upgrade (client libraries no longer restart a history)
        runtime_version = "1.20.0" if night < seeded.upgrade_night else "1.21.0"
        for index, (variant, (qps1, p99_1)) in enumerate(VARIANTS.items()):
            if variant == "fp32" and night == seeded.regression_night:
                p99_1 *= 1.4
            run = dag_run_id(night)
            result = run_result(
                night,
                variant=variant,
                scenarios=tuple(CONCURRENCY),
                runtime_version=runtime_version,
                model_load_ms=800.0 if variant == "fp32" else 650.0,
                labels={
                    "dag_id": DAG_ID,
                    "run_id": run,
                    "map_index": str(index),
                    "trigger": "scheduled",
                },
            )
            _at_concurrency(result, qps1, p99_1, rng)
            if night == nights - 1 and variant == "int8":
                last = result.scenarios[-1]
                flag = ValidityFlag(
                    code="client_saturated",
                    severity="warning",
                    message="the client's own CPU reached the saturation threshold",
                )
                result.scenarios[-1] = last.model_copy(update={"flags": [flag]})
            report = ingest_result(engine, result, detector=SETTINGS, metrics=METRICS)
            seeded.keys.setdefault(run, []).append(report.ingest_key)
    xss = run_result(
        nights + 1,
        model=XSS_MODEL,
        variant="fp32",
        scenarios=("closed-c1", "closed-c4"),
        labels={"dag_id": DAG_ID, "run_id": seeded.xss_dag_run, "map_index": "0"},
    )
    xss.started_at = xss.started_at + timedelta(hours=1)
    report = ingest_result(engine, xss, detector=SETTINGS, metrics=METRICS)
    seeded.keys[seeded.xss_dag_run] = [report.ingest_key]
    return seeded


__all__ = ["DAG_ID", "MODEL", "XSS_MODEL", "Seeded", "dag_run_id", "seed_history"]
