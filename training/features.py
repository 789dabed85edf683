"""Preprocessing inside the model: imputation, scaling and category lookup, fitted on training rows.

The exported model takes raw values, so everything a client would otherwise have to reproduce
(means, scales, vocabularies) lives in these layers. Statistics are computed here with numpy on
the training rows only and frozen into the layers as constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from training.data import InputGroup

# A column whose training spread is below this is treated as constant: dividing by a tiny standard
# deviation would turn rounding noise in unseen rows into huge activations.
VARIANCE_FLOOR_STD = 1e-3


@dataclass(frozen=True)
class NumericStats:
    """Per column: imputation value, centre, scale (floored) and whether to add a missing flag."""

    mean: list[float]
    scale: list[float]
    has_missing: list[bool]


def numeric_stats(values: np.ndarray) -> NumericStats:
    """Statistics of a [n, k] float array with NaN for missing values (training rows only)."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    counts = present.sum(axis=0)
    sums = np.where(present, values, 0.0).sum(axis=0)
    mean = np.divide(sums, counts, out=np.zeros(values.shape[1]), where=counts > 0)
    centred = np.where(present, values - mean, 0.0)
    var = np.divide((centred**2).sum(axis=0), counts, out=np.zeros(values.shape[1]), where=counts > 0)
    std = np.sqrt(var)
    # A (nearly) constant column carries no information; scale 1 keeps it at 0 after centring and
    # any later deviation bounded, where dividing by its tiny spread would explode.
    scale = np.where(std < VARIANCE_FLOOR_STD, 1.0, std)
    has_missing = (counts < values.shape[0]).tolist()
    return NumericStats(mean.tolist(), scale.tolist(), has_missing)


@keras.saving.register_keras_serializable(package="training")
class NumericPreprocessing(keras.layers.Layer):  # type: ignore[misc]
    """NaN -> training mean, then (x - mean) / scale; appends a 0/1 flag for columns that had gaps."""

    def __init__(self, mean: list[float], scale: list[float], has_missing: list[bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = list(mean)
        self.scale = list(scale)
        self.has_missing = list(has_missing)
        self._flag_columns = [i for i, m in enumerate(self.has_missing) if m]

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        missing = ops.isnan(x)
        mean = ops.convert_to_tensor(np.asarray(self.mean, dtype=np.float32))
        scale = ops.convert_to_tensor(np.asarray(self.scale, dtype=np.float32))
        filled = ops.where(missing, ops.broadcast_to(mean, ops.shape(x)), x)
        scaled = (filled - mean) / scale
        if not self._flag_columns:
            return scaled
        flags = ops.cast(ops.take(missing, self._flag_columns, axis=1), "float32")
        return ops.concatenate([scaled, flags], axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], len(self.mean) + len(self._flag_columns))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(mean=self.mean, scale=self.scale, has_missing=self.has_missing)
        return config


def vocabulary(values: np.ndarray) -> list[str]:
    """Categories seen in training, most frequent first (ties by name), '' (missing) included."""
    uniques, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    order = sorted(range(len(uniques)), key=lambda i: (-counts[i], uniques[i]))
    return [str(uniques[i]) for i in order]


def encode_input(
    group: InputGroup,
    tensor: Any,
    train_values: np.ndarray,
    *,
    categorical_encoding: str = "one_hot",
    embedding_dim: int = 4,
) -> Any:
    """The model-side encoding of one raw input group: a float [batch, d] tensor."""
    if group.kind == "numeric":
        stats = numeric_stats(train_values)
        layer = NumericPreprocessing(stats.mean, stats.scale, stats.has_missing, name=f"{group.name}_scale")
        return layer(tensor)
    vocab = vocabulary(train_values[:, 0])
    if categorical_encoding == "embedding":
        lookup = keras.layers.StringLookup(
            vocabulary=vocab, num_oov_indices=1, output_mode="int", name=f"{group.name}_lookup"
        )
        embedded = keras.layers.Embedding(len(vocab) + 1, embedding_dim, name=f"{group.name}_embedding")(
            lookup(tensor)
        )
        return keras.layers.Flatten(name=f"{group.name}_flat")(embedded)
    lookup = keras.layers.StringLookup(
        vocabulary=vocab, num_oov_indices=1, output_mode="one_hot", name=f"{group.name}_lookup"
    )
    return lookup(tensor)
