"""Export a member as a SavedModel in TF Serving's layout, and prove the export answers like Keras.

The serving function is written out explicitly so the ``serving_default`` signature's input keys
are the real input names and its output keys the real output names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.data import Dataset
from training.errors import ExportError

ROUND_TRIP_ATOL = 1e-5


def next_version(model_dir: Path) -> int:
    """The next free integer version folder under ``model_dir`` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def _input_signature(dataset: Dataset) -> dict[str, tf.TensorSpec]:
    """The served shapes (``InputGroup.shape``): [None] for a single column, [None, k] for a group."""
    return {
        g.name: tf.TensorSpec(
            [None, *g.shape[1:]], tf.float32 if g.kind == "numeric" else tf.string, name=g.name
        )
        for g in dataset.inputs
    }


def _to_tensors(features: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    out = {}
    for name, values in features.items():
        if values.dtype == object:
            out[name] = tf.constant(values.astype(str).tolist(), dtype=tf.string)
        else:
            out[name] = tf.constant(values, dtype=tf.float32)
    return out


def _as_signature_takes(fn: Any, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``features`` ([n, k] as the dataset gives them) in the ranks ``fn``'s signature declares:
    a single column as [n] for members exported with one value per instance, [n, 1] for older ones."""
    specs = fn.structured_input_signature[1]
    return {
        name: values.reshape(-1) if specs[name].shape.rank == 1 and values.ndim == 2 else values
        for name, values in features.items()
    }


def save_member(model: keras.Model, dataset: Dataset, path: Path) -> None:
    """Write ``path`` (a version folder) with a ``serving_default`` signature of named tensors."""
    output_names = [dataset.output_name(t) for t in dataset.targets]

    @tf.function(input_signature=[_input_signature(dataset)])  # type: ignore[misc,untyped-decorator]
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # The Keras model takes every input as [n, k]; a one-value-per-instance input becomes [n, 1].
        columns = {name: tf.expand_dims(t, -1) if t.shape.rank == 1 else t for name, t in inputs.items()}
        outputs = model(columns, training=False)
        return {name: tf.identity(outputs[name], name=name) for name in output_names}

    module = tf.Module()
    module.model = model
    module.serve = serve
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def load_signature(path: Path) -> Any:
    """The ``serving_default`` function of the SavedModel at ``path``."""
    loaded: Any = tf.saved_model.load(str(path))
    return loaded.signatures["serving_default"]


def run_signature(fn: Any, features: dict[str, np.ndarray], batch: int = 4096) -> dict[str, np.ndarray]:
    """Answers of a loaded signature on raw features ([n, k], as the dataset gives them), as numpy."""
    features = _as_signature_takes(fn, features)
    rows = len(next(iter(features.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, batch):
        chunk = {k: v[start : start + batch] for k, v in features.items()}
        for name, value in fn(**_to_tensors(chunk)).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def keras_predict(model: keras.Model, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs = model(_to_tensors(features), training=False)
    return {name: np.asarray(value) for name, value in outputs.items()}


def verify_round_trip(
    model: keras.Model, path: Path, actual: dict[str, np.ndarray], features: dict[str, np.ndarray]
) -> float:
    """Check the SavedModel's answers ``actual`` on ``features`` against the Keras model's.

    Tolerance 1e-5, relative for values above 1 (a regression output of 150 carries float32's
    ~1e-5 relative rounding). Returns the largest scaled difference; raises ExportError above it.
    """
    expected = keras_predict(model, features)
    if set(actual) != set(expected):
        raise ExportError(f"{path}: SavedModel outputs {sorted(actual)} differ from Keras {sorted(expected)}")
    worst = 0.0
    for name, value in expected.items():
        scale = np.maximum(1.0, np.abs(value.astype(np.float64)))
        diff = np.abs(actual[name].astype(np.float64) - value) / scale
        worst = max(worst, float(np.max(diff, initial=0.0)))
    if not worst <= ROUND_TRIP_ATOL:
        raise ExportError(
            f"{path}: SavedModel differs from the Keras model by {worst:.3g} (> {ROUND_TRIP_ATOL})"
        )
    return worst
