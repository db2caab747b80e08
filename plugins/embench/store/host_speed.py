"""How fast was the host during a run, compared with the same hardware's own history?

A run's document may carry `host_probe` (client.result.HostProbe): compute, memory
bandwidth and single-thread scores of a short fixed probe before and after the scenarios.
The run's speed ratio is the geometric mean, over the three scores, of the run's score (the
mean of before and after) over the median of that score in the earlier probes of the same
hardware (Environment.hardware_key) on the same cores (the probe's cpuset). Below 1 the
host was slower than usual; the detector uses it to tell a slow host from a slow server.
Runs without a probe, or hardware without enough probe history, have no ratio.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from embench.store.models import Environment, Run

SCORES = {
    "compute_gflops": "compute",
    "memory_gb_per_s": "memory",
    "single_thread_score": "single-thread",
}
# Earlier probes of the hardware read for its history.
HISTORY_PROBES = 20


@dataclass(frozen=True)
class HostSpeed:
    ratio: float  # this run's host speed / its hardware's usual speed
    history: int  # earlier probes it is compared with
    scores: dict[str, float]  # per score ratio

    def describe(self) -> str:
        parts = ", ".join(f"{SCORES[name]} {r:.2f}x" for name, r in self.scores.items())
        return f"{parts}; vs {self.history} earlier probes of this hardware"


def probe_scores(document: dict[str, Any] | None) -> dict[str, float] | None:
    """The run's probe scores (mean of before and after), None without a usable probe."""
    probe = (document or {}).get("host_probe")
    if not isinstance(probe, dict):
        return None
    sides = [s for s in (probe.get("before"), probe.get("after")) if isinstance(s, dict)]
    scores: dict[str, float] = {}
    for name in SCORES:
        values = [float(s[name]) for s in sides if _positive(s.get(name))]
        if values:
            scores[name] = statistics.fmean(values)
    return scores or None


def _cpuset(document: dict[str, Any] | None) -> str | None:
    probe = (document or {}).get("host_probe")
    return probe.get("cpuset") if isinstance(probe, dict) else None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def host_speed(session: Session, run_pk: int, min_history: int) -> HostSpeed | None:
    """The host speed ratio of run `run_pk` against the earlier probes of its hardware."""
    row = session.execute(
        sa.select(Run.document, Run.started_at, Environment.hardware_key)
        .join(Environment, Environment.id == Run.environment_id)
        .where(Run.id == run_pk)
    ).one_or_none()
    if row is None:
        return None
    scores = probe_scores(row.document)
    if scores is None:
        return None
    earlier = session.scalars(
        sa.select(Run.document)
        .join(Environment, Environment.id == Run.environment_id)
        .where(
            Environment.hardware_key == row.hardware_key,
            Run.started_at < row.started_at,
            Run.id != run_pk,
        )
        .order_by(Run.started_at.desc())
        .limit(HISTORY_PROBES * 3)  # not every run carries a probe
    ).all()
    # the same cores only: compute scales with the probe's cpuset
    cores = _cpuset(row.document)
    history = [
        s for s in (probe_scores(d) for d in earlier if _cpuset(d) == cores) if s is not None
    ][:HISTORY_PROBES]
    if len(history) < min_history:
        return None
    ratios: dict[str, float] = {}
    for name, value in scores.items():
        usual = [h[name] for h in history if name in h]
        if len(usual) >= min_history:
            ratios[name] = value / statistics.median(usual)
    if not ratios:
        return None
    ratio = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
    return HostSpeed(ratio, len(history), ratios)
