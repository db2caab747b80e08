"""Baseline marks: a deliberate change recorded by hand (`embench baseline mark`).

Nights before the newest mark that applies to a result are not its baseline; with `compare`
the first nights after the mark get an upgrade verdict against the nights before it. A mark
names a model and, optionally, narrows to a variant, runtime and scenario.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from embench.errors import EmbenchError
from embench.store.ingest import utc
from embench.store.models import BaselineMark, ScenarioRow


def add_mark(
    session: Session,
    *,
    model: str,
    reason: str,
    variant: str | None = None,
    runtime: str | None = None,
    scenario: str | None = None,
    marked_at: datetime | None = None,
    compare: bool = True,
) -> dict[str, Any]:
    """Record a mark; the results it applies to must exist (a typo would mark nothing)."""
    if not reason.strip():
        raise EmbenchError("a baseline mark needs a reason (--reason TEXT)")
    scope = {"model": model, "variant": variant, "runtime": runtime, "name": scenario}
    conditions = [getattr(ScenarioRow, k) == v for k, v in scope.items() if v is not None]
    if session.scalar(sa.select(ScenarioRow.id).where(*conditions).limit(1)) is None:
        known = session.scalars(
            sa.select(ScenarioRow.model).where(ScenarioRow.model.is_not(None)).distinct()
        ).all()
        named = ", ".join(f"{k}={v}" for k, v in scope.items() if v is not None)
        raise EmbenchError(
            f"no stored results match {named}; stored models: {', '.join(sorted(known)) or '-'}"
        )
    now = datetime.now(UTC)
    mark = BaselineMark(
        model=model,
        variant=variant,
        runtime=runtime,
        scenario=scenario,
        reason=reason.strip(),
        compare=compare,
        marked_at=utc(marked_at) or now,
        created_at=now,
        created_by=_user(),
    )
    session.add(mark)
    session.flush()
    return mark_dict(mark)


def list_marks(session: Session, model: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(BaselineMark).order_by(BaselineMark.marked_at.desc(), BaselineMark.id)
    if model is not None:
        stmt = stmt.where(BaselineMark.model == model)
    return [mark_dict(m) for m in session.scalars(stmt).all()]


def remove_mark(session: Session, mark_id: int) -> dict[str, Any]:
    mark = session.get(BaselineMark, mark_id)
    if mark is None:
        raise EmbenchError(f"no baseline mark #{mark_id} (see `embench baseline list`)")
    out = mark_dict(mark)
    session.delete(mark)
    return out


def mark_dict(mark: BaselineMark) -> dict[str, Any]:
    return {
        "id": mark.id,
        "model": mark.model,
        "variant": mark.variant,
        "runtime": mark.runtime,
        "scenario": mark.scenario,
        "reason": mark.reason,
        "compare": mark.compare,
        "marked_at": _iso(mark.marked_at),
        "created_at": _iso(mark.created_at),
        "created_by": mark.created_by,
    }


def _iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat() if value else None


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
