"""Idempotent ingest of result documents, one transaction per document.

A document is identified by its ingest key: `dag_id/run_id/map_index` (`slot-map_index` on
host slots beyond the first) when its labels carry them (an Airflow task), else the
document's own run_id. Ingesting a key again replaces the rows stored under it, so an Airflow
retry or a re-ingest leaves one copy. Any failure rolls
the whole document back; connection failures are retried (see db.with_retries) and the JSON
file is never touched, so `embench ingest PATH...` can try again later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from client.result import RunResult, stable_hash
from embench.errors import EmbenchError
from embench.host_slots import SLOT_LABEL
from embench.regression import DetectorSettings
from embench.store.db import session_scope, with_retries
from embench.store.models import (
    JSON_FIELDS,
    SCALAR_FIELDS,
    Environment,
    ModelArtifact,
    Run,
    ScenarioRow,
    VerdictRow,
)

log = logging.getLogger(__name__)

TRIGGER_KINDS = ("scheduled", "manual", "cli")
# Label names an Airflow task sets on the client run (RunLabels.labels).
LABEL_DAG_ID = "dag_id"
LABEL_RUN_ID = "run_id"
LABEL_MAP_INDEX = "map_index"
LABEL_HOST_SLOT = SLOT_LABEL
LABEL_TRY = "try_number"
LABEL_TRIGGER = "trigger"


@dataclass
class IngestReport:
    ingest_key: str
    run_pk: int
    doc_run_id: str
    replaced: bool
    scenarios: int
    source_path: str | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def regressed(self) -> list[dict[str, Any]]:
        return [v for v in self.verdicts if v["status"] == "regressed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ingest_key": self.ingest_key,
            "run_pk": self.run_pk,
            "run_id": self.doc_run_id,
            "replaced": self.replaced,
            "scenarios": self.scenarios,
            "source_path": self.source_path,
            "verdicts": self.verdicts,
            "regressed": len(self.regressed),
        }


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetimes; naive ones (SQLite reads them back naive) are taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ingest_key(result: RunResult) -> str:
    labels = result.metadata.labels
    if labels.get(LABEL_DAG_ID) and labels.get(LABEL_RUN_ID):
        map_index = labels.get(LABEL_MAP_INDEX, "-1")
        slot = labels.get(LABEL_HOST_SLOT) or "0"
        # beyond the first host, each host's groups are mapped from 0 too (host_slots)
        target = map_index if slot == "0" else f"{slot}-{map_index}"
        return f"{labels[LABEL_DAG_ID]}/{labels[LABEL_RUN_ID]}/{target}"
    return result.run_id


def baseline_components(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What can change the server's speed and is not in the comparability key (which holds
    model, variant, runtime, scenario, server config and hardware): the runtime's version,
    the server's libraries (runtime, tokenizer, torch, ...) and the model artifact. Client
    libraries (rich, docker, ...) are not here: they do not change the server. `metadata` is
    a result's metadata as JSON (RunResult.metadata, or runs.document["metadata"]).
    Migration 0002 holds a frozen copy of this formula."""
    return {
        "runtime_version": metadata.get("runtime_version"),
        "server_libraries": dict(metadata.get("server_library_versions") or {}),
        "manifest_sha256": metadata.get("manifest_sha256"),
    }


def baseline_key(result: RunResult) -> str:
    """A change of this key starts a new baseline (and an upgrade verdict) within a
    comparability key."""
    return stable_hash(baseline_components(result.metadata.model_dump(mode="json")))


def describe_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """What changed between two runs' metadata, as "onnxruntime 1.22.0 -> 1.23.0, model
    artifact 1a2b3c4d -> 5e6f7a8b" (the runtime version is named by the runtime library
    when that library says the same)."""
    old, new = baseline_components(before), baseline_components(after)
    changes: list[tuple[str, str, str]] = []
    libraries = sorted(set(old["server_libraries"]) | set(new["server_libraries"]))
    for name in libraries:
        a, b = old["server_libraries"].get(name), new["server_libraries"].get(name)
        if a != b:
            changes.append((name, str(a or "none"), str(b or "none")))
    if old["runtime_version"] != new["runtime_version"]:
        pair = (str(old["runtime_version"] or "none"), str(new["runtime_version"] or "none"))
        if pair not in {(a, b) for _, a, b in changes}:
            runtime = after.get("runtime") or "runtime"
            changes.insert(0, (f"{runtime} runtime", *pair))
    if old["manifest_sha256"] != new["manifest_sha256"]:
        short = [
            str(v)[:8] if v else "none" for v in (old["manifest_sha256"], new["manifest_sha256"])
        ]
        changes.append(("model artifact", short[0], short[1]))
    return ", ".join(f"{name} {a} -> {b}" for name, a, b in changes) or "baseline key changed"


def trigger_kind(result: RunResult) -> str:
    labels = result.metadata.labels
    kind = labels.get(LABEL_TRIGGER)
    if kind in TRIGGER_KINDS:
        return kind
    if labels.get(LABEL_DAG_ID):
        run_id = labels.get(LABEL_RUN_ID, "")
        return "scheduled" if run_id.startswith("scheduled") else "manual"
    return "cli"


def _int_label(labels: dict[str, str], name: str) -> int | None:
    try:
        return int(labels[name])
    except (KeyError, ValueError):
        return None


def _environment_id(session: Session, result: RunResult, now: datetime) -> int:
    document = result.environment.model_dump(mode="json")
    fingerprint = stable_hash(document)
    existing = session.scalar(
        sa.select(Environment.id).where(Environment.fingerprint_hash == fingerprint)
    )
    if existing is not None:
        return existing
    row = Environment(
        fingerprint_hash=fingerprint,
        hardware_key=result.environment.hardware_key,
        hostname=result.environment.hostname,
        document=document,
        first_seen=now,
    )
    session.add(row)
    session.flush()
    return row.id


def _artifact_id(session: Session, result: RunResult, now: datetime) -> int | None:
    meta = result.metadata
    if not meta.manifest_sha256:
        return None
    existing = session.scalar(
        sa.select(ModelArtifact.id).where(ModelArtifact.manifest_sha256 == meta.manifest_sha256)
    )
    if existing is not None:
        return existing
    parity = meta.server_info.get("parity") if isinstance(meta.server_info, dict) else None
    row = ModelArtifact(
        manifest_sha256=meta.manifest_sha256,
        model=meta.model,
        variant=meta.variant,
        parity=parity if isinstance(parity, dict) else None,
        first_seen=now,
    )
    session.add(row)
    session.flush()
    return row.id


def _delete_run(session: Session, key: str) -> bool:
    """Remove what an earlier ingest stored under `key` (children first: no reliance on
    ON DELETE CASCADE being enforced)."""
    run_pk = session.scalar(sa.select(Run.id).where(Run.ingest_key == key))
    if run_pk is None:
        return False
    session.execute(sa.delete(VerdictRow).where(VerdictRow.run_pk == run_pk))
    session.execute(sa.delete(ScenarioRow).where(ScenarioRow.run_pk == run_pk))
    session.execute(sa.delete(Run).where(Run.id == run_pk))
    return True


def _run_row(
    result: RunResult, key: str, env_id: int, artifact_id: int | None, source: str | None
) -> Run:
    meta = result.metadata
    labels = meta.labels
    document = result.model_dump(mode="json", exclude={"scenarios"})
    return Run(
        ingest_key=key,
        doc_run_id=result.run_id,
        dag_id=labels.get(LABEL_DAG_ID),
        dag_run_id=labels.get(LABEL_RUN_ID),
        map_index=_int_label(labels, LABEL_MAP_INDEX),
        try_number=_int_label(labels, LABEL_TRY),
        trigger_kind=trigger_kind(result),
        status=result.status,
        status_reason=result.status_reason,
        valid=result.valid,
        started_at=utc(result.started_at),
        finished_at=utc(result.finished_at),
        ingested_at=datetime.now(UTC),
        git_sha=meta.git_sha,
        model=meta.model,
        variant=meta.variant,
        runtime=meta.runtime,
        runtime_version=meta.runtime_version,
        server_version=meta.server_version,
        model_load_ms=meta.model_load_ms,
        threads=meta.threads,
        server_config=meta.server_config,
        server_config_key=meta.server_config_key,
        image=meta.image,
        image_digest=meta.image_digest,
        schema_version=result.schema_version,
        baseline_key=baseline_key(result),
        environment_id=env_id,
        artifact_id=artifact_id,
        labels=dict(labels),
        document=document,
        source_path=source,
    )


def scenario_values(result: RunResult, run: Run) -> list[dict[str, Any]]:
    """Column values of the scenario_results rows of `result` (also used by the bench)."""
    rows = []
    for scenario in result.scenarios:
        data = scenario.model_dump(mode="python")
        values: dict[str, Any] = {name: data[name] for name in SCALAR_FIELDS}
        for name in ("started_at", "measure_started_at", "finished_at"):
            values[name] = utc(values[name])
        json_data = scenario.model_dump(mode="json", include=set(JSON_FIELDS))
        values.update({name: json_data[name] for name in JSON_FIELDS})
        values.update(
            run_pk=run.id,
            model=run.model,
            variant=run.variant,
            runtime=run.runtime,
            baseline_key=run.baseline_key,
        )
        rows.append(values)
    return rows


def _insert_scenarios(session: Session, result: RunResult, run: Run) -> list[int]:
    ids = []
    for values in scenario_values(result, run):
        row = ScenarioRow(**values)
        session.add(row)
        session.flush()
        ids.append(row.id)
    return ids


def store_result(
    session: Session, result: RunResult, source_path: str | None = None
) -> IngestReport:
    """Store (or replace) one document inside the caller's transaction."""
    now = datetime.now(UTC)
    key = ingest_key(result)
    replaced = _delete_run(session, key)
    env_id = _environment_id(session, result, now)
    artifact_id = _artifact_id(session, result, now)
    run = _run_row(result, key, env_id, artifact_id, source_path)
    session.add(run)
    session.flush()
    ids = _insert_scenarios(session, result, run)
    return IngestReport(key, run.id, result.run_id, replaced, len(ids), source_path)


def ingest_result(
    engine: Engine,
    result: RunResult,
    *,
    source_path: str | None = None,
    detector: DetectorSettings | None = None,
    metrics: Sequence[str] = (),
) -> IngestReport:
    """Store one document in one transaction, replacing an earlier copy with the same ingest
    key; with `detector`, judge `metrics` of every scenario and store the verdicts in the
    same transaction. Connection failures are retried, then raise EmbenchError."""
    from embench.store.detect import detect_in_session, night_verdicts

    def attempt() -> IngestReport:
        with session_scope(engine) as session:
            report = store_result(session, result, source_path)
            if detector is not None and metrics:
                detect_in_session(session, report.run_pk, detector, metrics)
                report.verdicts = night_verdicts(session, report.run_pk)
            return report

    def attempt_once_more_on_race() -> IngestReport:
        try:
            return attempt()
        except IntegrityError:
            # A concurrent ingest of the same key or environment won; the next try replaces it.
            log.info("ingest %s raced with another writer; retrying", ingest_key(result))
            return attempt()

    return with_retries(engine, f"ingest {ingest_key(result)}", attempt_once_more_on_race)


def load_document(path: Path) -> RunResult:
    try:
        return RunResult.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise EmbenchError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise EmbenchError(
            f"{path}: not a valid result document: {where}: {first['msg']} "
            f"({exc.error_count()} error(s))"
        ) from exc


def ingest_paths(
    engine: Engine,
    paths: Sequence[Path],
    *,
    detector: DetectorSettings | None = None,
    metrics: Sequence[str] = (),
) -> list[IngestReport]:
    """Ingest result files (a folder: its *.json files), each in its own transaction."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        else:
            files.append(path)
    if not files:
        raise EmbenchError(f"no result files in {', '.join(str(p) for p in paths)}")
    documents = [(path, load_document(path)) for path in files]  # all valid before any write
    documents.sort(key=lambda item: item[1].started_at)  # history grows in time order
    return [
        ingest_result(engine, doc, source_path=str(path), detector=detector, metrics=metrics)
        for path, doc in documents
    ]
