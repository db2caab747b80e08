"""The roofline bench's arithmetic: FLOPs per token and batch, layouts, time at peak."""

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "roofline", Path(__file__).resolve().parents[2] / "bench" / "roofline.py"
)
roofline = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(roofline)

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}


def test_minilm_costs_about_21_mflop_per_token_in_its_linear_layers():
    assert roofline.linear_flops_per_token(384, 1536, 6) == 21_233_664


def test_attention_flops_grow_with_the_sequence_length():
    assert roofline.attention_flops_per_token(384, 6, 32) == 4 * 6 * 32 * 384
    assert roofline.attention_flops_per_token(384, 6, 64) == 2 * 4 * 6 * 32 * 384


def test_a_batch_counts_its_padding_as_computed_tokens():
    real, computed, linear, attention = roofline.batch_flops(MINILM, [10, 30, 20])
    assert (real, computed) == (60, 90)
    assert linear == 90 * roofline.linear_flops_per_token(384, 1536, 6)
    assert attention == 90 * roofline.attention_flops_per_token(384, 6, 30)


def test_layout_is_workers_by_threads():
    assert roofline.parse_layout("2x1") == (2, 1)
    assert roofline.parse_layout("1X2") == (1, 2)
    with pytest.raises(ValueError):
        roofline.parse_layout("0x2")


def test_time_at_peak_weighs_each_precision_by_its_share():
    peaks = {"fp32": 100.0, "bf16": 400.0, "int8": 1000.0}
    mix = {"int8": 0.5, "fp32": 0.5}
    # 500 at 1000/s + 500 at 100/s + 40 attention at the fp32 peak: 0.5 + 5 + 0.4 seconds
    assert roofline.ideal_seconds(1000.0, 40.0, mix, "fp32", peaks) == pytest.approx(5.9)
