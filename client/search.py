"""Peak throughput under a latency SLO: a search scenario, bisected over probes.

A search scenario (ScenarioParams.search) asks for the highest open-loop rate, or closed-loop
concurrency, at which p99 over all requests stays at or under the SLO and the error rate
under `max_error_rate` (LoadGen's FindPeakPerformance, perf_analyzer's latency threshold).
Each probe is an ordinary scenario at one load (a copy of the search scenario with its rate
or concurrency set), measured by the runner's own path - warm-up, windows, stability rules,
validity flags - so a probe is exactly as trustworthy as any scenario, and a probe that is
invalid or unstable never passes.

Order: `high` first (if it passes, the peak is at least `high` and nothing more is known),
then `low` (if it fails, no load in the range meets the SLO), then the geometric midpoint of
the highest passing and lowest failing loads, until their ratio is within 1 + precision or
max_probes probes have run. Geometric, not arithmetic, midpoints: the stopping rule is
relative, and halving the log-width reaches it in the fewest probes; concurrency midpoints
are rounded to whole numbers (the search ends when no whole number lies between).

The search's ScenarioResult carries the figures of the highest passing probe (when none
passed, those of the lowest probe, flagged search_none_passed), every probe's summary and
why the search ended. Probes are named `<search>.p<k>-r<rate>` / `-c<concurrency>`: the
arrival and text seeds derive from the name, so each probe draws its own texts.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Literal

from client.result import ScenarioResult, SearchProbe, ValidityFlag
from client.scenario import ScenarioDefinition, ScenarioParams, SearchParams

ProbeFn = Callable[[ScenarioParams], Awaitable[ScenarioResult]]
SettleFn = Callable[[], Awaitable[bool]]  # between probes; False: interrupted
MessageFn = Callable[[str], None]
Outcome = Literal["found", "above_high", "none_passed", "max_probes", "interrupted"]

# ------------------------------------------------------------------ the pass rule


def _complete(r: ScenarioResult, s: SearchParams) -> str | None:
    return None if r.status == "complete" else "interrupted"


def _valid(r: ScenarioResult, s: SearchParams) -> str | None:
    if r.valid:
        return None
    invalid = [f"{f.code} ({f.message})" for f in r.flags if f.severity == "invalid"]
    return "invalid: " + ("; ".join(invalid) or "no reason given")


def _stable(r: ScenarioResult, s: SearchParams) -> str | None:
    # checked apart from `valid`: figures that never settled are no evidence of meeting an SLO
    if r.stable or r.stop_reason == "slo_missed":  # stopped before it could settle: _valid says
        return None
    return f"unstable: {r.stability_reason}"


def _meets_slo(r: ScenarioResult, s: SearchParams) -> str | None:
    if r.p99_ms is None:
        why = r.percentile_notes.get("p99", f"{r.latency_count} latencies")
        return f"p99 not measured ({why})"
    if r.p99_ms > s.slo_p99_ms:
        return f"p99 {r.p99_ms:.1f} ms > {s.slo_p99_ms:g} ms"
    return None


def _errors(r: ScenarioResult, s: SearchParams) -> str | None:
    if r.error_rate >= s.max_error_rate:
        return f"error rate {r.error_rate:.2%} >= {s.max_error_rate:.2%}"
    return None


# Each rule returns why a probe fails it, or None. A probe passes when it fails none.
PASS_RULES: tuple[Callable[[ScenarioResult, SearchParams], str | None], ...] = (
    _complete,
    _valid,
    _stable,
    _meets_slo,
    _errors,
)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def judge(r: ScenarioResult, search: SearchParams) -> Verdict:
    failures = [why for rule in PASS_RULES if (why := rule(r, search)) is not None]
    if failures:
        return Verdict(False, "; ".join(failures))
    return Verdict(
        True,
        f"p99 {r.p99_ms:.1f} ms <= {search.slo_p99_ms:g} ms, errors {r.error_rate:.2%}",
    )


# ------------------------------------------------------------------ the bisection


def midpoint(lo: float, hi: float, over: str) -> float | None:
    """The next load strictly between lo and hi, or None when there is none (concurrency)."""
    mid = math.sqrt(lo * hi)
    if over == "concurrency":
        whole = min(max(round(mid), math.floor(lo) + 1), math.ceil(hi) - 1)
        return float(whole) if lo < whole < hi else None
    shown = float(f"{mid:.3g}")  # three significant digits: readable names, same search
    return shown if lo < shown < hi else mid


class Bisection:
    """Which load to probe next, from the outcomes so far (no I/O: tested on its own)."""

    def __init__(self, search: SearchParams) -> None:
        self.search = search
        self.passed_at: float | None = None  # highest load that passed
        self.failed_at: float | None = None  # lowest load that failed
        self.count = 0

    def precise(self) -> bool:
        lo, hi = self.passed_at, self.failed_at
        if lo is None or hi is None:
            return False
        if self.search.over == "concurrency" and hi - lo <= 1:
            return True
        return hi / lo - 1 <= self.search.precision

    def next(self) -> float | None:
        """The next load to probe, or None when the search is over."""
        s = self.search
        if self.count == 0:
            return s.high
        if self.failed_at is None:  # high passed
            return None
        if self.count == 1:
            return s.low
        if self.passed_at is None or self.precise() or self.count >= s.max_probes:
            return None
        return midpoint(self.passed_at, self.failed_at, s.over)

    def record(self, load: float, passed: bool) -> None:
        self.count += 1
        if passed:
            self.passed_at = load if self.passed_at is None else max(self.passed_at, load)
        else:
            self.failed_at = load if self.failed_at is None else min(self.failed_at, load)

    def outcome(self) -> Outcome:
        if self.failed_at is None and self.passed_at is not None:
            return "above_high"
        if self.passed_at is None:
            return "none_passed"
        # whole-number bounds two or more apart always have a midpoint, so the search ended
        # either at its precision or at max_probes
        return "found" if self.precise() else "max_probes"


# ------------------------------------------------------------------ probes


def describe(over: str, load: float) -> str:
    return f"rate {load:g}/s" if over == "rate" else f"concurrency {load:g}"


def probe_params(params: ScenarioParams, load: float, index: int) -> ScenarioParams:
    """The search scenario at one load: an ordinary open (rate) or closed (concurrency)
    scenario with its own name (and so its own seeds)."""
    search = params.search
    assert search is not None
    value: float | int = load if search.over == "rate" else int(load)
    tag = "r" if search.over == "rate" else "c"
    update: dict[str, object] = {
        "name": f"{params.name[:48]}.p{index}-{tag}{value:g}",
        "search": None,
        search.over: value,
        "slo_p99_ms": search.slo_p99_ms,  # each probe's goodput and slo_met
        # an overloaded rate probe ends once its p99 cannot meet the SLO (a closed loop has
        # no arrival count to bound it, and builds no backlog to wait out)
        "stop_when_slo_missed": search.over == "rate",
    }
    return params.model_copy(update=update)


@dataclass
class ProbeRun:
    load: float
    result: ScenarioResult
    verdict: Verdict
    elapsed_s: float

    def summary(self, index: int) -> SearchProbe:
        r = self.result
        return SearchProbe(
            index=index,
            name=r.name,
            load=self.load,
            qps=r.qps,
            p99_ms=r.p99_ms,
            error_rate=r.error_rate,
            valid=r.valid,
            stable=r.stable,
            passed=self.verdict.passed,
            reason=self.verdict.reason,
            duration_s=r.duration_s,
            elapsed_s=round(self.elapsed_s, 3),
        )


async def run_search(
    params: ScenarioParams,
    definition: ScenarioDefinition,
    comparability_key: str,
    probe: ProbeFn,
    settle: SettleFn,
    message: MessageFn,
) -> ScenarioResult:
    """Run the search's probes (each through `probe`, the runner's scenario path; `settle`
    between two) and build the search's ScenarioResult."""
    search = params.search
    if search is None:
        raise ValueError(f"scenario {params.name!r} is not a search scenario")
    bisection = Bisection(search)
    probes: list[ProbeRun] = []
    interrupted = False
    while (load := bisection.next()) is not None:
        if probes and not await settle():
            interrupted = True
            break
        index = len(probes) + 1
        message(
            f"search {params.name}: probe {index} (at most {search.max_probes}): "
            f"{describe(search.over, load)}"
        )
        started = perf_counter()
        result = await probe(probe_params(params, load, index))
        verdict = judge(result, search)
        probes.append(ProbeRun(load, result, verdict, perf_counter() - started))
        message(
            f"search {params.name}: probe {index}, {describe(search.over, load)}: "
            f"{'passed' if verdict.passed else 'failed'}: {verdict.reason}"
        )
        if result.status != "complete":
            interrupted = True
            break
        bisection.record(load, verdict.passed)
    outcome: Outcome = "interrupted" if interrupted else bisection.outcome()
    return search_result(params, definition, comparability_key, probes, outcome)


def _reason(search: SearchParams, probes: list[ProbeRun], outcome: Outcome) -> str:
    over = search.over
    passed = [p for p in probes if p.verdict.passed]
    failed = [p for p in probes if not p.verdict.passed]
    best = max(passed, key=lambda p: p.load) if passed else None
    slo = f"p99 <= {search.slo_p99_ms:g} ms and errors < {search.max_error_rate:.2%}"
    if outcome == "interrupted":
        return f"interrupted after {len(probes)} probe(s); the search did not finish"
    if outcome == "above_high":
        return (
            f"the peak is at least search.high: {describe(over, search.high)} met {slo} "
            f"({probes[0].verdict.reason}); raise search.high to find it"
        )
    if outcome == "none_passed":
        return (
            f"no load met {slo}: not even search.low, {describe(over, search.low)} "
            f"({failed[-1].verdict.reason})"
        )
    assert best is not None
    above = min((p for p in failed if p.load > best.load), key=lambda p: p.load)
    width = above.load / best.load - 1
    text = (
        f"peak {describe(over, best.load)} met {slo}; {describe(over, above.load)} did not "
        f"({above.verdict.reason}); bracket width {width:.1%} after {len(probes)} probes"
    )
    if outcome == "max_probes":
        text += f", wider than precision {search.precision:.0%}: max_probes ended the search"
    else:
        text += f" (precision {search.precision:.0%})"
    return text


def search_result(
    params: ScenarioParams,
    definition: ScenarioDefinition,
    comparability_key: str,
    probes: list[ProbeRun],
    outcome: Outcome,
) -> ScenarioResult:
    """The search as one result: the figures of the highest passing probe, else the lowest."""
    search = params.search
    assert search is not None and probes
    passed = [p for p in probes if p.verdict.passed]
    best = max(passed, key=lambda p: p.load) if passed else None
    shown = best or min(probes, key=lambda p: p.load)
    r = shown.result
    reason = _reason(search, probes, outcome)
    flags = list(r.flags)

    def flag(code: str, severity: Literal["invalid", "warning"]) -> None:
        flags.append(ValidityFlag(code=code, severity=severity, message=reason))

    if outcome == "above_high":
        flag("search_above_high", "invalid")  # a lower bound, not a peak: no history point
    elif outcome == "none_passed":
        flag("search_none_passed", "invalid")
    elif outcome == "max_probes":
        flag("search_imprecise", "warning")
    elif outcome == "interrupted" and not any(f.code == "interrupted" for f in flags):
        flag("interrupted", "invalid")
    update: dict[str, object] = {
        "name": params.name,
        "status": "incomplete" if outcome == "interrupted" else "complete",
        "params": params,
        "definition": definition,
        "definition_key": definition.key(),
        "comparability_key": comparability_key,
        "started_at": probes[0].result.started_at,
        "finished_at": probes[-1].result.finished_at,
        "valid": not any(f.severity == "invalid" for f in flags),
        "flags": flags,
        "search_over": search.over,
        "peak_load": best.load if best else None,
        "peak_qps": best.result.qps if best else None,
        "search_probes": [p.summary(i) for i, p in enumerate(probes, start=1)],
        "search_reason": reason,
        "slo_p99_ms": search.slo_p99_ms,
    }
    # validated again (not model_copy): the result is a document others read
    return ScenarioResult.model_validate({**dict(r), **update})
