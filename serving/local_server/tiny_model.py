"""The tiny Keras member that end-to-end tests and benchmarks serve, as a SavedModel in TF Serving's layout.

Two named inputs (``features``: float32 [None, 3]; ``color``: string [None], one value per
instance as training exports a single column, looked up inside the graph) and one output named
``probabilities`` (3 classes). ``scale`` changes the weights, so two versions give different answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = ["red", "green", "blue"]


def export(path: Path, scale: float = 1.0) -> None:
    import keras
    import tensorflow as tf

    features = keras.Input(shape=(3,), name="features", dtype="float32")
    color = keras.Input(shape=(1,), name="color", dtype="string")
    one_hot = keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot", num_oov_indices=1)(color)
    merged = keras.layers.Concatenate()([features, one_hot])
    logits = keras.layers.Dense(3, name="logits")(merged)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    model = keras.Model({"features": features, "color": color}, {"probabilities": probabilities})
    dense = model.get_layer("logits")
    kernel = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32) * scale
    dense.set_weights([kernel, np.array([0.1, 0.0, -0.1], np.float32)])

    signature = {
        "features": tf.TensorSpec([None, 3], tf.float32, name="features"),
        "color": tf.TensorSpec([None], tf.string, name="color"),
    }

    @tf.function(input_signature=[signature])  # type: ignore[misc, untyped-decorator]
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        columns = {"features": inputs["features"], "color": tf.expand_dims(inputs["color"], -1)}
        return {"probabilities": model(columns, training=False)["probabilities"]}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
