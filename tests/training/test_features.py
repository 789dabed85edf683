"""Preprocessing layers: imputation, the variance floor, category lookup, all inside the model."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import InputGroup
from training.features import VARIANCE_FLOOR_STD, NumericPreprocessing, numeric_stats, vocabulary


def test_stats_ignore_missing_values_and_flag_them() -> None:
    values = np.array([[1.0, 5.0], [np.nan, 5.0], [3.0, 5.0]])
    stats = numeric_stats(values)
    assert stats.mean == pytest.approx([2.0, 5.0])
    assert stats.scale[0] == pytest.approx(1.0)  # std of [1, 3]
    assert stats.has_missing == [True, False]


def test_zero_variance_column_is_floored() -> None:
    values = np.array([[7.0, 0.0], [7.0, 1.0], [7.0 + VARIANCE_FLOOR_STD / 100, 2.0]])
    stats = numeric_stats(values)
    assert stats.scale[0] == 1.0
    layer = NumericPreprocessing(stats.mean, stats.scale, stats.has_missing)
    out = np.asarray(layer(np.array([[107.0, 1.0]], dtype=np.float32)))
    # a constant column that moves by 100 gives ~100, not ~1e7
    assert abs(out[0, 0]) == pytest.approx(100.0, rel=1e-3)
    assert np.all(np.isfinite(out))


def test_layer_imputes_and_appends_missing_flags() -> None:
    stats = numeric_stats(np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, 6.0]]))
    layer = NumericPreprocessing(stats.mean, stats.scale, stats.has_missing)
    out = np.asarray(layer(np.array([[np.nan, 4.0], [3.0, np.nan]], dtype=np.float32)))
    assert out.shape == (2, 3)  # two scaled columns + one flag (only column 0 had gaps)
    assert out[0, 0] == pytest.approx(0.0)  # missing -> mean -> 0
    assert out[0, 2] == 1.0
    assert out[1, 2] == 0.0
    assert out[1, 1] == pytest.approx(0.0)  # missing in a column without a flag still imputes
    assert out[1, 0] == pytest.approx(1.0)
    restored = NumericPreprocessing.from_config(layer.get_config())
    assert np.allclose(np.asarray(restored(np.array([[np.nan, 4.0]], dtype=np.float32))), out[:1])


def test_vocabulary_is_by_frequency_and_keeps_missing() -> None:
    assert vocabulary(np.array(["b", "a", "b", "", "c", "a", "b"])) == ["b", "a", "", "c"]


def test_categorical_lookup_one_hot_and_unseen_values() -> None:
    import keras

    from training.features import encode_input

    group = InputGroup("colour", ["colour"], "categorical")
    tensor = keras.Input(shape=(1,), name="colour", dtype="string")
    encoded = encode_input(group, tensor, np.array([["red"], ["red"], ["blue"], [""]], dtype=object))
    model = keras.Model(tensor, encoded)
    import tensorflow as tf

    out = np.asarray(model(tf.constant([["red"], ["blue"], [""], ["violet"]])))
    assert out.shape == (4, 4)  # OOV + red, blue, ''
    assert np.allclose(out.sum(axis=1), 1.0)
    assert out[3, 0] == 1.0  # unseen category -> the out-of-vocabulary slot
    assert len({tuple(row) for row in out}) == 4
