"""The "Tuned per host" section of the run report: per tuned target, the default's and the
tuned settings' QPS, their ratio and what was chosen, from the tuning record each result
carries in its labels (TUNING_LABEL, written by embench.tuning)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def tuning_record(labels: Mapping[str, Any] | None, label: str) -> dict[str, Any] | None:
    """The tuning record in a run's labels (None: not tuned, or unreadable)."""
    text = (labels or {}).get(label)
    if not text:
        return None
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def settings_text(settings: Mapping[str, Any]) -> str:
    """{"workers": 1, "threads": 2, "spinning": True} -> "1 worker x 2 threads, spinning"."""
    parts = []
    if "workers" in settings or "threads" in settings:
        workers, threads = settings.get("workers", "?"), settings.get("threads", "?")
        parts.append(
            f"{workers} worker{'s' if workers != 1 else ''} x "
            f"{threads} thread{'s' if threads != 1 else ''}"
        )
    for key, value in settings.items():
        if key in ("workers", "threads"):
            continue
        if isinstance(value, bool):
            parts.append(key if value else f"no {key}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def tuning_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per tuned (model, runtime, variant): repetitions share their target's tuning."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs:
        record = run.get("tuning")
        if not record:
            continue
        who = (str(run.get("model")), str(run.get("runtime")), str(run.get("variant")))
        if who in rows:
            continue
        changed = record.get("changed") or {}
        rows[who] = {
            "model": who[0],
            "runtime": who[1],
            "variant": who[2],
            "default_qps": record.get("default_qps"),
            "tuned_qps": record.get("tuned_qps"),
            "ratio": record.get("ratio"),
            "kept_default": bool(record.get("kept_default")),
            "chosen": settings_text(changed) if changed else "the default",
            "settings": settings_text(record.get("settings") or {}),
            "candidates": len(record.get("candidates") or []),
            "cache_hit": bool(record.get("cache_hit")),
            "measured_at": record.get("at"),
        }
    return list(rows.values())
