"""Content-keyed artifact cache: one directory per (model, variant, cache key).

Entries are built in a private temporary directory and published with an atomic rename
under a per-key file lock, so concurrent prepares never see or leave half an entry. Every
hit is verified against the file hashes in its manifest; a corrupted entry is removed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import ValidationError

from embench.errors import EmbenchError
from server.manifest import MANIFEST_NAME, Manifest, check_files, read_manifest

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 1800.0
STALE_TMP_AGE_S = 24 * 3600.0


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines an artifact."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_dir(self, model_id: str, variant: str, key: str) -> Path:
        return self.root / "models" / model_id / f"{variant}-{key[:16]}"

    def lookup(self, model_id: str, variant: str, key: str) -> Manifest | None:
        """The entry's manifest if it is present and intact; a damaged entry is removed."""
        directory = self.entry_dir(model_id, variant, key)
        if not (directory / MANIFEST_NAME).is_file():
            return None
        problem = self._verify(directory, key)
        if problem is None:
            return read_manifest(directory)
        log.warning("cache entry %s is damaged (%s); rebuilding it", directory, problem)
        self._discard(directory)
        return None

    @contextmanager
    def locked(self, model_id: str, variant: str, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_dir / f"{model_id}-{variant}-{key[:16]}.lock")
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise EmbenchError(
                f"another prepare of {model_id}/{variant} has held {lock.lock_file} for "
                f"{LOCK_TIMEOUT_S:.0f} s; if no prepare is running, delete that file"
            ) from None

    @contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A private directory on the cache's filesystem (so publishing is a rename)."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        self._sweep_stale(tmp_root)
        path = Path(tempfile.mkdtemp(prefix="build-", dir=tmp_root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: Path, model_id: str, variant: str, key: str) -> Path:
        """Move a finished entry into place atomically. Call while holding the key's lock."""
        final = self.entry_dir(model_id, variant, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a damaged leftover without a valid manifest
            self._discard(final)
        os.rename(staged, final)
        return final

    def _verify(self, directory: Path, key: str) -> str | None:
        try:
            manifest = read_manifest(directory)
        except (OSError, ValueError, ValidationError) as exc:
            return f"unreadable manifest: {type(exc).__name__}"
        if manifest.cache_key != key:
            return "manifest belongs to another cache key"
        problems = check_files(directory, manifest)
        return problems[0] if problems else None

    def _discard(self, directory: Path) -> None:
        # Rename first so that a reader never sees a half-deleted entry.
        trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return  # another process discarded it first
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_stale(self, tmp_root: Path) -> None:
        """Remove staging directories left by builds that died more than a day ago."""
        now = time.time()
        for path in tmp_root.iterdir():
            try:
                if now - path.stat().st_mtime > STALE_TMP_AGE_S:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue
