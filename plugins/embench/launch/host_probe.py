"""Host calibration around a benchmark: the probe (`python -m server.probe`) runs on the
server's cores before and after the client's scenarios, and the result document carries
both runs and their drift, so that a slower host is told apart from a slower server.

A probe that fails never fails the benchmark: the result then carries what did run (or no
probe at all) and a note saying why."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from client.result import (
    PROBE_SCORES,
    HostProbe,
    ProbeScores,
    load_result,
    probe_drift,
    write_atomic,
)
from embench.errors import EmbenchError

if TYPE_CHECKING:
    from embench.launch.handle import ServerHandle
    from embench.launch.site import Site

log = logging.getLogger(__name__)

PROBE_COMMAND = ["python3", "-m", "server.probe"]
PROBE_TIMEOUT_S = 120.0  # about a second normally (process site; docker: its read timeout)
DRIFT_BOUND = 0.10  # |after / before - 1| beyond this on any score: the host moved


def parse_probe(code: int | None, stdout: str, stderr: str) -> ProbeScores:
    """The probe's JSON line as ProbeScores, or an EmbenchError that says why not."""
    if code != 0:
        why = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        if "No module named server.probe" in stderr:
            why += " (the server image predates the probe: rebuild it)"
        raise EmbenchError(f"the host probe exited with status {code}: {why}")
    lines = stdout.strip().splitlines()
    try:
        return ProbeScores.model_validate(json.loads(lines[-1]))
    except (IndexError, ValueError, ValidationError) as exc:
        raise EmbenchError(f"the host probe printed no valid scores: {exc}") from None


def format_cpuset(cpus: set[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5'."""
    ranges: list[str] = []
    for cpu in sorted(cpus):
        if ranges and cpu == int(ranges[-1].rsplit("-", 1)[-1]) + 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{cpu}"
        else:
            ranges.append(str(cpu))
    return ",".join(ranges)


def probe_or_note(
    probe: Callable[[], ProbeScores], when: str, notes: list[str]
) -> ProbeScores | None:
    """Run one probe; a failure becomes a note (and None), never the benchmark's failure."""
    try:
        scores = probe()
    except Exception as exc:  # whatever went wrong, the scenarios' figures stand
        notes.append(f"host probe {when} the scenarios failed: {exc}")
        log.warning("host probe %s the scenarios failed: %s", when, exc)
        return None
    log.info(
        "host probe %s the scenarios: %.1f GFLOP/s, %.1f GB/s, %.3g loop iterations/s (%.2f s)",
        when,
        scores.compute_gflops,
        scores.memory_gb_per_s,
        scores.single_thread_score,
        scores.seconds,
    )
    return scores


def host_probe(
    cpuset: str | None,
    before: ProbeScores | None,
    after: ProbeScores | None,
    notes: list[str],
    bound: float = DRIFT_BOUND,
) -> HostProbe:
    """Both probes and their drift; a drift beyond `bound` adds a note naming each score."""
    drift = probe_drift(before, after)
    if drift is not None and before is not None and after is not None and drift > bound:
        moved = ", ".join(
            f"{score} {getattr(after, score) / getattr(before, score) - 1:+.1%}"
            for score in PROBE_SCORES
        )
        notes.append(
            f"the host drifted during the run: its probe after the scenarios differs from "
            f"the one before by up to {drift:.1%} (bound {bound:.0%}): {moved}"
        )
        log.warning("host drift %.1f%% during the run: %s", 100 * drift, moved)
    return HostProbe(cpuset=cpuset, before=before, after=after, drift=drift)


def attach_host_probe(out: Path, probe: HostProbe, notes: list[str]) -> None:
    """Add the probe and its notes to the result document at `out` (atomically). A document
    this cannot read is left as the client wrote it: the probe is worth less than the run."""
    try:
        result = load_result(out)
        result.host_probe = probe
        result.notes.extend(notes)
        write_atomic(out, result)  # all or nothing: the client's document stays on failure
    except (OSError, ValueError) as exc:  # ValidationError is a ValueError
        log.warning("could not add the host probe to %s: %s", out, exc)


class HostCalibration:
    """The probe around one benchmark on one site: `before()` the client runs, `after()` it
    (only while the server still runs: its cores are what is probed), then `attach(out)`
    records both, the server's cpuset and every note in the result document."""

    def __init__(self, site: Site, handle: ServerHandle) -> None:
        self.site = site
        self.handle = handle
        self.notes: list[str] = []
        self.before_scores: ProbeScores | None = None
        self.after_scores: ProbeScores | None = None

    def before(self) -> None:
        self.before_scores = probe_or_note(self._probe, "before", self.notes)

    def after(self) -> None:
        self.after_scores = probe_or_note(self._probe, "after", self.notes)

    def attach(self, out: Path) -> None:
        cpuset = self._cpuset()
        probe = host_probe(cpuset, self.before_scores, self.after_scores, self.notes)
        attach_host_probe(out, probe, self.notes)

    def _probe(self) -> ProbeScores:
        if self.handle.launcher == "external":
            raise EmbenchError("an external server's host is not ours to probe")
        return self.site.probe_host(self.handle)

    def _cpuset(self) -> str | None:
        if self.handle.launcher == "external":
            return None
        try:
            return self.site.server_cpuset(self.handle)
        except Exception as exc:  # only the probe's record lacks it: not worth a failed run
            self.notes.append(f"the server's cpuset could not be read for the host probe: {exc}")
            return None
