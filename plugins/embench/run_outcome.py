"""What a run did not measure, and why.

A task that fails for good (its retries spent) leaves a record in the run's folder, written
by the DAG's failure callback: which task, which benchmark group (host slot and map index),
which try, and the error. The report matches the plan against what was stored: every
planned target without a stored result is listed with the failure of its group, or of its
host when the host could not be provisioned (the report's "Not measured" section)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from embench.host_slots import SLOT_LABEL, slot_of_task, targets_of

FAILURES_DIR = "failures"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def target_id(slot: int, map_index: int) -> str:
    """A benchmark group's id within its run (as in ingest keys and work folders)."""
    return f"{slot}-{map_index}" if slot else str(map_index)


def record_failure(
    run_dir: Path, task_id: str, map_index: int | None, try_number: int, error: str
) -> Path:
    """Write (atomically; a later try's record replaces an earlier one) the failure of one
    task instance under `run_dir/failures/`."""
    folder = run_dir / FAILURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    index = -1 if map_index is None else map_index
    record = {
        "task_id": task_id,
        "map_index": index,
        SLOT_LABEL: slot_of_task(task_id),
        "try_number": try_number,
        "error": error.strip()[:2000],
    }
    path = folder / f"{_SAFE.sub('_', task_id)}.{index}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True)
    os.replace(tmp, path)
    return path


def failures(run_dir: Path) -> list[dict[str, Any]]:
    """The run's failure records (unreadable ones are skipped: this is a report)."""
    records = []
    for path in sorted((run_dir / FAILURES_DIR).glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def not_measured(
    planned: list[dict[str, Any]], stored_ids: set[str], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Planned targets with no stored result: each with why (its group's failed task, its
    host's failed provisioning, or "did not finish" when nothing was recorded)."""
    slots = sorted({int(t.get(SLOT_LABEL, 0)) for t in planned})
    host_failures = {
        int(r[SLOT_LABEL]): r for r in records if str(r["task_id"]).startswith("provision_host")
    }
    group_failures: dict[str, dict[str, Any]] = {}
    for record in records:
        if record["map_index"] >= 0:
            group_failures.setdefault(
                target_id(int(record[SLOT_LABEL]), int(record["map_index"])), record
            )
    missing = []
    for slot in slots:
        for index, target in enumerate(targets_of(planned, slot)):
            tid = target_id(slot, index)
            if tid in stored_ids:
                continue
            failure = group_failures.get(tid) or host_failures.get(slot)
            if failure is None:
                why = "did not finish (no task failure was recorded)"
            elif failure["task_id"].startswith("provision_host"):
                why = f"its host (slot {slot}) could not be provisioned: {failure['error']}"
            else:
                task = str(failure["task_id"]).rsplit(".", 1)[-1]
                why = f"{task} failed (try {failure['try_number']}): {failure['error']}"
            missing.append(
                {
                    "target": "/".join(
                        str(target[k]) for k in ("model", "runtime", "variant") if target.get(k)
                    ),
                    "repetition": target.get("repetition", 1),
                    "instance_type": target.get("instance_type"),
                    SLOT_LABEL: slot,
                    "target_id": tid,
                    "reason": why,
                }
            )
    return missing
