"""The PyTorch and OpenVINO runtimes' variants of MiniLM, built for real: each behind its
parity gate, opened by the server's own runtime code, and cached like the ONNX ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embench.errors import ParityError
from embench.prepare import prepare_targets
from embench.prepare import variants as variant_settings
from embench.prepare.parity import parity_texts
from server.manifest import file_sha256, read_manifest
from server.runtime import create_embedder

pytestmark = pytest.mark.slow
MODEL = "all-minilm-l6-v2"
TARGETS = [
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]


@pytest.fixture(scope="module")
def prepared(app_config, model_cache):
    built = prepare_targets(app_config, MODEL, TARGETS, cache_root=model_cache)
    return {(p.runtime, p.variant): p for p in built}


def test_every_runtime_variant_meets_its_gate_and_records_how_to_open_it(prepared):
    assert set(prepared) == set(TARGETS)
    for (runtime, variant), item in prepared.items():
        manifest = read_manifest(item.directory)
        assert manifest == item.manifest
        assert (manifest.runtime, manifest.variant) == (runtime, variant)
        assert manifest.parity.passed and manifest.parity.texts == len(parity_texts())
        for name, info in manifest.files.items():  # subfolders (1_Pooling/...) included
            assert file_sha256(item.directory / name) == info.sha256, name
    options = {key: item.manifest.runtime_options for key, item in prepared.items()}
    assert options[("torch", "bf16")] == {"dtype": "bfloat16"}
    assert options[("openvino", "fp32")] == {"inference_precision": "f32"}
    assert options[("openvino", "bf16")] == {"inference_precision": "bf16"}
    # fp32 is exact on both runtimes; reduced precision is close, not equal
    for runtime in ("torch", "openvino"):
        assert prepared[(runtime, "fp32")].manifest.parity.min_cosine >= 0.99999
        assert prepared[(runtime, "bf16")].manifest.parity.min_cosine < 0.99999


def test_torch_variant_is_the_sentence_transformers_model_alone(prepared):
    directory = prepared[("torch", "fp32")].directory
    names = set(prepared[("torch", "fp32")].manifest.files)
    assert {"modules.json", "model.safetensors", "tokenizer.json"} <= names
    assert any(name.startswith("1_Pooling/") for name in names)
    assert not any(name.endswith((".onnx", ".xml")) for name in names)
    assert json.loads((directory / "modules.json").read_text())  # loadable as it is


def test_openvino_int8_is_quantized_and_smaller(prepared):
    fp32 = prepared[("openvino", "fp32")].manifest
    int8 = prepared[("openvino", "int8")].manifest
    assert set(fp32.files) >= {"openvino_model.xml", "openvino_model.bin", "tokenizer.json"}
    assert int8.model_bytes < 0.5 * fp32.model_bytes
    assert int8.settings["nodes_kept_fp32"] == 6  # MiniLM's six FFN down-projections


def test_openvino_precision_hint_is_applied(prepared):
    """On an AMX CPU OpenVINO runs bf16 unless told otherwise: fp32 must really be fp32."""
    texts = parity_texts()[:8]
    vectors = {}
    for variant in ("fp32", "bf16"):
        item = prepared[("openvino", variant)]
        embedder = create_embedder(
            "openvino",
            item.directory,
            model_info=item.manifest.model,
            options=item.manifest.runtime_options,
            threads=1,
        )
        vectors[variant] = embedder.embed(texts)
    difference = np.abs(vectors["fp32"] - vectors["bf16"]).max()
    assert difference > 1e-4, "bf16 and fp32 gave the same numbers: the hint is not applied"


def test_openvino_int8_without_its_exclusions_fails_the_gate(app_config, tmp_path, monkeypatch):
    """The gate applies to every runtime: NNCF's int8 of every MatMul, FFN down-projections
    included, loses too much for MiniLM (min cosine about 0.93)."""
    settings = variant_settings.RUNTIME_VARIANT_SETTINGS["openvino"]
    naive = {**settings["int8"], "quantize": {**settings["int8"]["quantize"]}}
    naive["quantize"]["exclude_nodes_matching"] = "^$"
    naive["runtime_options"] = {"inference_precision": "f32"}
    monkeypatch.setitem(settings, "int8", naive)
    cache = tmp_path / "cache"
    with pytest.raises(ParityError, match=r"all-minilm-l6-v2/openvino-int8 failed its parity gate"):
        prepare_targets(app_config, MODEL, [("openvino", "int8")], cache_root=cache)
    assert not (cache / "models" / MODEL).exists() or not any((cache / "models" / MODEL).iterdir())
