"""Preprocessing inside the model: imputation, scaling and category lookup, fitted on training rows.

The exported model takes raw values, so everything a client would otherwise have to reproduce
(means, scales, vocabularies) lives in these layers. Statistics are computed here with numpy on
the training rows only and frozen into the layers as constants.

Members are built from Keras' own layers only (Normalization, Rescaling, Activation, StringLookup),
so a checkpoint loads with ``keras.models.load_model`` in a process that has only Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from training.config import Scaling
from training.data import InputGroup

# A column whose training spread is below this is treated as constant: dividing by a tiny standard
# deviation would turn rounding noise in unseen rows into huge activations.
VARIANCE_FLOOR_STD = 1e-3
# Imputation without a custom layer: hard_shrink(v) is 0 where |v| <= 0.5, NaN included, and v
# elsewhere. Scaled up by 2**20 first (exact in float32), only values within 5e-7 of the fill
# value, i.e. of 0 after centring, are also set to 0: the fill value itself, to float32 rounding.
_IMPUTE_GAIN = 2.0**20


@dataclass(frozen=True)
class NumericStats:
    """Per column: imputation value (the mean), scale (floored), whether to add a missing flag,
    and the centre subtracted before scaling (the mean, or the minimum for min-max scaling)."""

    mean: list[float]
    scale: list[float]
    has_missing: list[bool]
    centre: list[float] = field(default_factory=list)


def numeric_stats(values: np.ndarray, scaling: Scaling = "standard") -> NumericStats:
    """Statistics of a [n, k] float array with NaN for missing values (training rows only).

    ``standard``: centre = mean, scale = standard deviation; ``minmax``: centre = minimum,
    scale = maximum - minimum (so training rows land in [0, 1]); ``none``: centre 0, scale 1.
    Either spread below :data:`VARIANCE_FLOOR_STD` counts as a constant column (scale 1).
    """
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    counts = present.sum(axis=0)
    sums = np.where(present, values, 0.0).sum(axis=0)
    mean = np.divide(sums, counts, out=np.zeros(values.shape[1]), where=counts > 0)
    centred = np.where(present, values - mean, 0.0)
    var = np.divide((centred**2).sum(axis=0), counts, out=np.zeros(values.shape[1]), where=counts > 0)
    spread, centre = np.sqrt(var), mean
    if scaling == "minmax":
        low = np.nanmin(np.where(present, values, np.inf), axis=0)
        high = np.nanmax(np.where(present, values, -np.inf), axis=0)
        seen = counts > 0
        centre = np.where(seen, low, 0.0)
        spread = np.where(seen, high - low, 0.0)
    elif scaling == "none":
        centre, spread = np.zeros_like(mean), np.ones_like(mean)
    # A (nearly) constant column carries no information; scale 1 keeps it at 0 after centring and
    # any later deviation bounded, where dividing by its tiny spread would explode.
    scale = np.where(spread < VARIANCE_FLOOR_STD, 1.0, spread)
    has_missing = (counts < values.shape[0]).tolist()
    return NumericStats(mean.tolist(), scale.tolist(), has_missing, centre.tolist())


def _normalization(shift: np.ndarray, scale: np.ndarray, name: str) -> keras.layers.Normalization:
    """``(x - shift) / scale`` per column, as Keras' Normalization layer with frozen statistics."""
    return keras.layers.Normalization(
        axis=-1, mean=shift.tolist(), variance=np.square(scale).tolist(), name=name
    )


def numeric_layers(stats: NumericStats, tensor: Any, name: str) -> Any:
    """The built-in-layer form of :class:`NumericPreprocessing` (same values, up to float32
    rounding), with the centre of ``stats``: missing -> the mean (in every column: a client may
    leave out a value training never missed), then (x - centre) / scale, then one 0/1 flag per
    column that had gaps in training."""
    mean, scale = np.asarray(stats.mean), np.asarray(stats.scale)
    centre = np.asarray(stats.centre or stats.mean)
    # Centred on the mean, a missing value becomes exactly 0 once NaN is zeroed; min-max scaling
    # (or none) then shifts by (mean - centre) / scale.
    scaled = _normalization(mean, scale, f"{name}_scale")(tensor)
    scaled = keras.layers.Rescaling(_IMPUTE_GAIN, name=f"{name}_impute_gain")(scaled)
    scaled = keras.layers.Activation("hard_shrink", name=f"{name}_impute")(scaled)
    scaled = keras.layers.Rescaling(1.0 / _IMPUTE_GAIN, name=f"{name}_impute_unscale")(scaled)
    shift = (mean - centre) / scale
    if shift.any():
        scaled = _normalization(-shift, np.ones_like(shift), f"{name}_shift")(scaled)
    columns = [i for i, gaps in enumerate(stats.has_missing) if gaps]
    if not columns:
        return scaled
    # 0 * x + 1 is NaN exactly where x is missing; hard_shrink turns that NaN to 0 and keeps 1.
    present = keras.layers.Rescaling(0.0, offset=1.0, name=f"{name}_ones")(tensor)
    present = keras.layers.Activation("hard_shrink", name=f"{name}_present")(present)
    flags = keras.layers.Rescaling(-1.0, offset=1.0, name=f"{name}_missing")(present)
    if len(columns) < len(stats.has_missing):
        # Only the columns that had gaps get a flag: a frozen 0/1 selection matrix picks them.
        select = keras.layers.Dense(len(columns), use_bias=False, trainable=False, name=f"{name}_flags")
        flags = select(flags)
        matrix = np.zeros((len(stats.has_missing), len(columns)), dtype=np.float32)
        matrix[columns, range(len(columns))] = 1.0
        select.set_weights([matrix])
    return keras.layers.Concatenate(name=f"{name}_with_flags")([scaled, flags])


@keras.saving.register_keras_serializable(package="training")
class NumericPreprocessing(keras.layers.Layer):  # type: ignore[misc]
    """NaN -> training mean, then (x - mean) / scale; appends a 0/1 flag for columns that had gaps.

    Members are now built with :func:`numeric_layers`; this layer stays registered so checkpoints
    written before still load (with this package imported).
    """

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
    scaling: Scaling = "standard",
) -> Any:
    """The model-side encoding of one raw input group: a float [batch, d] tensor."""
    if group.kind == "numeric":
        return numeric_layers(numeric_stats(train_values, scaling), tensor, group.name)
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
