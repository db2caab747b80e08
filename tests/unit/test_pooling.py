"""Pooling ignores padding and normalization gives unit vectors."""

import numpy as np
import pytest

from server.pooling import l2_normalize, pool


def test_mean_pooling_ignores_padded_positions():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 3.0]])


def test_cls_pooling_takes_the_first_token():
    hidden = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    np.testing.assert_allclose(pool(hidden, np.ones((2, 3)), "cls"), [[0, 1], [6, 7]])


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="unknown pooling method 'max'"):
        pool(np.zeros((1, 1, 1)), np.ones((1, 1)), "max")


def test_l2_normalize_gives_unit_rows_and_survives_zero_rows():
    vectors = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(vectors[0], [0.6, 0.8])
    assert np.isfinite(vectors).all()
