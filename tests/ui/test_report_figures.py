"""The report shows every figure with its interval, a percentile its sample cannot support as
"n/a" with what it needs, the peak under the SLO a search found, and the history API hands
each point's interval to the chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.result import SearchProbe
from embench.report import collect, markdown
from embench.store.db import make_engine, session_scope, upgrade_to_head
from embench.store.ingest import ingest_result
from embench.store.queries import metric_history
from tests.store.factory import MODEL, run_result

P999_NOTE = "needs at least 3688 requests for a 95% interval; 1000 measured"


@pytest.fixture
def stored(tmp_path: Path) -> tuple[object, str]:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    upgrade_to_head(engine)
    result = run_result(qps_ci=0.05, p99_ci=0.10, scenarios=("closed-c1",))
    plain = result.scenarios[0].model_copy(
        update={"p999_ms": None, "percentile_notes": {"p999": P999_NOTE}}
    )
    probe = SearchProbe(
        index=1,
        name="peak.p1-r60",
        load=60.0,
        qps=59.5,
        p99_ms=80.0,
        error_rate=0.0,
        valid=True,
        stable=True,
        passed=True,
        reason="p99 80.0 ms <= 100 ms",
        duration_s=8.0,
        elapsed_s=11.0,
    )
    search = plain.model_copy(
        update={
            "name": "open-peak-p99-100ms",
            "slo_p99_ms": 100.0,
            "search_over": "rate",
            "peak_load": 60.0,
            "peak_qps": 59.5,
            "search_probes": [probe],
            "search_reason": "bracket [60, 65] within 10%",
            "percentile_notes": {},
        }
    )
    report = ingest_result(engine, result.model_copy(update={"scenarios": [plain, search]}))
    return engine, report.ingest_key


def test_figures_carry_their_intervals_and_unsupported_percentiles_say_why(stored) -> None:
    engine, key = stored
    with session_scope(engine) as session:
        data = collect(session, [key], "figures")
    text = markdown(data)
    row = next(line for line in text.splitlines() if "| closed-c1 |" in line)
    assert "| 100.0 [95.0-105.0] |" in row  # QPS and its interval
    assert "| 20.0 [18.0-22.0] |" in row  # p99 and its interval
    assert "| n/a |" in row  # p99.9 of 1000 requests is no number
    assert "`p999_not_reported`: not reported in 1 scenario result(s): needs at least 3688" in text


def test_the_peak_under_the_slo_has_its_own_table(stored) -> None:
    engine, key = stored
    with session_scope(engine) as session:
        data = collect(session, [key], "figures")
    text = markdown(data)
    peaks = text.split("## Peak throughput under the latency SLO", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in peaks.splitlines() if "open-peak-p99-100ms" in line)
    assert "| 100.0 | rate | 60.0 | 59.5 |" in row and "| 1 | bracket [60, 65]" in row
    assert "closed-c1" not in peaks


def test_history_points_carry_their_interval(stored) -> None:
    engine, _ = stored
    with session_scope(engine) as session:
        (point,) = metric_history(session, "p99_ms", model=MODEL, scenario="closed-c1")
        (rate,) = metric_history(session, "qps", model=MODEL, scenario="closed-c1")
        (cpu,) = metric_history(session, "error_rate", model=MODEL, scenario="closed-c1")
    assert (point["ci_low"], point["ci_high"]) == pytest.approx((18.0, 22.0))
    assert (rate["ci_low"], rate["ci_high"]) == pytest.approx((95.0, 105.0))
    assert (cpu["ci_low"], cpu["ci_high"]) == (None, None)  # a figure without an interval
