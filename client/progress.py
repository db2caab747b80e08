"""Progress: a rich progress bar per scenario on a terminal, one line per scenario otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from client.result import ScenarioResult

if TYPE_CHECKING:
    from client.loadgen import LoadEngine

ProgressMode = Literal["auto", "rich", "plain", "none"]


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def scenario_line(r: ScenarioResult) -> str:
    flags = ",".join(f.code for f in r.flags) or "-"
    return (
        f"scenario {r.name}: {r.status}, {'valid' if r.valid else 'INVALID'}, "
        f"{'stable' if r.stable else 'unstable'}; {r.requests_ok} ok / {r.requests_failed} failed "
        f"({r.error_rate:.2%}) in {r.duration_s:.1f} s; qps {r.qps:.1f}, "
        f"texts/s {r.texts_per_s:.1f}; latency ms p50 {_fmt(r.p50_ms)} p90 {_fmt(r.p90_ms)} "
        f"p99 {_fmt(r.p99_ms)} [{_fmt(r.p99_ci_low_ms)}, {_fmt(r.p99_ci_high_ms)}] "
        f"p99.9 {_fmt(r.p999_ms)} max {_fmt(r.max_ms)}"
        + (
            f"; figures from {r.figures_from_s:g} s over {r.stable_windows} windows of "
            f"{r.window_s:g} s"
            if r.stable and r.window_s
            else ""
        )
        + (f"; dropped {r.requests_dropped}" if r.requests_dropped else "")
        + (f"; goodput {_fmt(r.goodput_per_s)}/s" if r.goodput_per_s is not None else "")
        + (f"; lag p99 {_fmt(r.lag_p99_ms, '.2f')} ms" if r.lag_p99_ms is not None else "")
        + (
            f"; server cpu {_fmt(r.server_cpu_pct_mean, '.0f')}%"
            if r.server_cpu_pct_mean is not None
            else ""
        )
        + f"; client cpu {_fmt(r.client_cpu_pct_mean, '.0f')}%; flags {flags}"
        + (_search_part(r) if r.search_over else "")
    )


def _search_part(r: ScenarioResult) -> str:
    """A search's line: the figures above are its best probe's; then what it found."""
    peak = "none" if r.peak_load is None else f"{r.search_over} {r.peak_load:g}"
    return (
        f"; search over {len(r.search_probes)} probes: peak {peak} "
        f"(qps {_fmt(r.peak_qps)}): {r.search_reason}"
    )


class Reporter(Protocol):
    def message(self, text: str) -> None: ...

    def scenario_started(self, index: int, total: int, engine: LoadEngine) -> None: ...

    def tick(self, engine: LoadEngine, now: float) -> None: ...

    def scenario_finished(self, result: ScenarioResult) -> None: ...

    def close(self) -> None: ...


class PlainReporter:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def scenario_started(self, index: int, total: int, engine: LoadEngine) -> None:
        pass

    def tick(self, engine: LoadEngine, now: float) -> None:
        pass

    def scenario_finished(self, result: ScenarioResult) -> None:
        self.message(scenario_line(result))

    def close(self) -> None:
        pass


class RichReporter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[phase]:>7}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task: TaskID | None = None

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def scenario_started(self, index: int, total: int, engine: LoadEngine) -> None:
        self.task = self.progress.add_task(
            f"[{index}/{total}] {engine.params.name}", total=1.0, phase="warmup", status=""
        )

    def tick(self, engine: LoadEngine, now: float) -> None:
        if self.task is None:
            return
        p = engine.params
        if engine.phase == "warmup":
            done = 0.0
            status = f"{engine.completed} warm-up requests"
        else:
            elapsed = max(now - engine.t0, 0.0)
            done = min(1.0, min(elapsed / p.min_duration_s, engine.measured_done / p.min_requests))
            done = max(done, min(1.0, elapsed / p.max_duration_s))
            qps = engine.measured_done / elapsed if elapsed > 0 else 0.0
            status = (
                f"{engine.measured_done} req, {qps:.0f}/s, {engine.measured_errors} err, "
                f"in flight {engine.inflight}"
                + (f", windows of {engine.window_s:.1f} s" if engine.window_s else "")
                + (f", check {engine.trials}" if engine.trials else "")
            )
        self.progress.update(self.task, completed=done, phase=engine.phase, status=status)

    def scenario_finished(self, result: ScenarioResult) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=1.0, phase="done", status="")
            self.task = None
        self.message(scenario_line(result))

    def close(self) -> None:
        self.progress.stop()


def make_reporter(mode: ProgressMode) -> Reporter:
    if mode == "none":
        return PlainReporter(quiet=True)
    if mode == "rich" or (mode == "auto" and sys.stderr.isatty()):
        return RichReporter()
    return PlainReporter()
