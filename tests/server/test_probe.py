"""The host probe (`python -m server.probe`) for real: real numpy, real processes, pinned to
real cores, and a real competitor on its core to stand for a slowed host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from client.result import PROBE_SCORES, ProbeScores
from embench.launch.host_probe import host_probe

ONE_CPU = min(os.sched_getaffinity(0))


def run_probe(cpus: set[int] | None = None) -> tuple[ProbeScores, float]:
    """The probe as the sites run it, pinned to `cpus`; its scores and its wall time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "server.probe"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    (line,) = done.stdout.splitlines()  # one JSON object, nothing else on stdout
    return ProbeScores.model_validate(json.loads(line)), time.monotonic() - started


@contextmanager
def competitor(cpu: int) -> Iterator[None]:
    """A busy loop on `cpu` meanwhile: a probe pinned there gets half of that core."""
    hog = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        time.sleep(0.2)  # running before the probe starts
        yield
    finally:
        hog.kill()
        hog.wait()


def test_the_probe_prints_its_scores_as_one_json_line_in_well_under_five_seconds():
    scores, wall_s = run_probe()
    assert scores.compute_gflops > 1 and scores.memory_gb_per_s > 0.5
    assert scores.single_thread_score > 1e5
    assert scores.cpus == len(os.sched_getaffinity(0))
    assert 0 < scores.seconds <= wall_s < 5, f"the probe took {wall_s:.1f} s"
    assert abs(time.time() - scores.at.timestamp()) < 60  # when it ran, with a time zone


def test_the_probe_uses_the_cores_it_is_given():
    scores, _ = run_probe({ONE_CPU})
    assert scores.cpus == 1


def test_a_slowed_host_shows_in_every_score_and_in_the_drift():
    """A busy process sharing the probe's one core halves what the probe gets: every score
    drops far beyond the drift bound, and the drift note names each. (A scripted slowdown:
    a probe that timed anything but its own work on its own cores, or a drift that missed a
    score, fails this.) The baseline is the same core without the competitor, the better of
    two runs around the loaded one, so that other load on this machine cannot fake it."""
    first, _ = run_probe({ONE_CPU})
    with competitor(ONE_CPU):
        loaded, _ = run_probe({ONE_CPU})
    second, _ = run_probe({ONE_CPU})
    for score in PROBE_SCORES:
        free = max(getattr(first, score), getattr(second, score))
        ratio = getattr(loaded, score) / free
        assert ratio < 0.8, f"{score}: with the competitor / without = {ratio:.2f}"
    notes: list[str] = []
    probe = host_probe(str(ONE_CPU), first, loaded, notes)
    assert probe.drift is not None and probe.drift > 0.1
    assert len(notes) == 1 and "the host drifted during the run" in notes[0]
    assert all(f"{score} -" in notes[0] for score in PROBE_SCORES)
