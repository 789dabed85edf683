"""Member architectures: raw named inputs -> preprocessing -> body -> one named head per target.

Bodies: ``mlp`` (a Sequential stack on the concatenated features), ``branches`` (one small stack
per input group, concatenated) and ``residual`` (a projection and residual blocks). Regression
heads predict standardised values and un-standardise them in the graph, so the exported model
answers in the target's own units.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import numpy.typing as npt

from training.config import ModelConfig
from training.data import Dataset, InputGroup
from training.features import encode_input


@keras.saving.register_keras_serializable(package="training")
class Affine(keras.layers.Layer):  # type: ignore[misc]
    """``x * scale + shift`` with frozen constants: a regression head back in target units.

    Heads now use Keras' Rescaling (the same product and sum), so checkpoints load in plain Keras;
    this layer stays registered so checkpoints written before still load.
    """

    def __init__(self, shift: float, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = float(shift)
        self.scale = float(scale)

    def call(self, inputs: Any) -> Any:
        return inputs * self.scale + self.shift

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(shift=self.shift, scale=self.scale)
        return config


def _dense(cfg: ModelConfig, units: int, name: str) -> keras.layers.Dense:
    regularizer = keras.regularizers.L1L2(l1=cfg.l1, l2=cfg.l2) if (cfg.l1 or cfg.l2) else None
    return keras.layers.Dense(
        units, kernel_initializer=cfg.initializer, kernel_regularizer=regularizer, name=name
    )


def _hidden_layers(cfg: ModelConfig, units: int, prefix: str) -> list[keras.layers.Layer]:
    """Dense -> (BatchNorm) -> activation -> (Dropout), as a list of layers."""
    layers: list[keras.layers.Layer] = [_dense(cfg, units, f"{prefix}_dense")]
    if cfg.batch_norm:
        layers.append(keras.layers.BatchNormalization(name=f"{prefix}_bn"))
    layers.append(keras.layers.Activation(cfg.activation, name=f"{prefix}_act"))
    if cfg.dropout:
        layers.append(keras.layers.Dropout(cfg.dropout, name=f"{prefix}_dropout"))
    return layers


def _apply(layers: list[keras.layers.Layer], tensor: Any) -> Any:
    for layer in layers:
        tensor = layer(tensor)
    return tensor


def _concat(tensors: list[Any], name: str) -> Any:
    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=name)(tensors)


def _mlp(cfg: ModelConfig, encoded: list[Any]) -> Any:
    body = keras.Sequential(
        [layer for i in range(cfg.depth) for layer in _hidden_layers(cfg, cfg.width, f"mlp{i}")], name="mlp"
    )
    return body(_concat(encoded, "features"))


def _branches(cfg: ModelConfig, encoded: list[Any], groups: list[InputGroup]) -> Any:
    branch_width = max(8, cfg.width // max(1, len(groups)))
    outs = []
    for group, tensor in zip(groups, encoded, strict=True):
        for i in range(cfg.depth):
            tensor = _apply(_hidden_layers(cfg, branch_width, f"{group.name}_branch{i}"), tensor)
        outs.append(tensor)
    return _apply(_hidden_layers(cfg, cfg.width, "merge"), _concat(outs, "branches"))


def _residual(cfg: ModelConfig, encoded: list[Any]) -> Any:
    x = _apply(_hidden_layers(cfg, cfg.width, "stem"), _concat(encoded, "features"))
    for b in range(cfg.residual_blocks):
        h = _apply(_hidden_layers(cfg, cfg.width, f"res{b}a"), x)
        h = _dense(cfg, cfg.width, f"res{b}b_dense")(h)
        x = keras.layers.Activation(cfg.activation, name=f"res{b}_out")(
            keras.layers.Add(name=f"res{b}_add")([x, h])
        )
    return x


def _sigmoid_head(hidden: Any, name: str) -> Any:
    """One sigmoid unit p = P(second class), served as [1 - p, p] like every classifier.

    The categorical cross-entropy of [1 - p, p] is -log p or -log(1 - p): exactly the binary
    cross-entropy of the unit, so it trains as a sigmoid head and serves the usual contract.
    """
    positive = keras.layers.Dense(1, activation="sigmoid", name=f"{name}_sigmoid")(hidden)
    negative = keras.layers.Rescaling(-1.0, offset=1.0, name=f"{name}_complement")(positive)
    return keras.layers.Concatenate(name=name)([negative, positive])


def build_model(cfg: ModelConfig, dataset: Dataset, rows: npt.NDArray[np.int64]) -> keras.Model:
    """The member model: dict of raw inputs in, dict of named outputs out (not compiled).

    Preprocessing statistics come from ``rows``, the rows the member fits: never from rows it
    holds out, whose predictions must stay out of fold.
    """
    train = dataset.features(rows)
    labels = dataset.labels(rows)
    inputs: dict[str, Any] = {}
    encoded: list[Any] = []
    for group in dataset.inputs:
        tensor = keras.Input(shape=(len(group.columns),), name=group.name, dtype=group.dtype)
        inputs[group.name] = tensor
        encoded.append(
            encode_input(
                group,
                tensor,
                train[group.name],
                categorical_encoding=cfg.categorical_encoding,
                embedding_dim=cfg.embedding_dim,
                scaling=cfg.scaling,
            )
        )
    if cfg.architecture == "branches":
        hidden = _branches(cfg, encoded, dataset.inputs)
    elif cfg.architecture == "residual":
        hidden = _residual(cfg, encoded)
    else:
        hidden = _mlp(cfg, encoded)

    outputs: dict[str, Any] = {}
    for target in dataset.targets:
        name = dataset.output_name(target)
        if target.task == "multilabel":  # independent labels: one sigmoid each, served as they are
            outputs[name] = keras.layers.Dense(len(target.classes), activation="sigmoid", name=name)(hidden)
        elif target.task == "classification" and cfg.binary_head == "sigmoid" and len(target.classes) == 2:
            outputs[name] = _sigmoid_head(hidden, name)
        elif target.task == "classification":
            outputs[name] = keras.layers.Dense(len(target.classes), activation="softmax", name=name)(hidden)
        else:
            y = labels[name].astype(np.float64)
            std = float(y.std()) or 1.0
            raw = keras.layers.Dense(1, name=f"{name}_standardised")(hidden)
            outputs[name] = keras.layers.Rescaling(scale=std, offset=float(y.mean()), name=name)(raw)
    return keras.Model(inputs=inputs, outputs=outputs, name="member")


def losses(
    dataset: Dataset, loss_weights: dict[str, float], rows: npt.NDArray[np.int64]
) -> tuple[dict[str, str], dict[str, float]]:
    """Loss and loss weight per output. A regression loss is divided by the target's variance (on
    the fitted ``rows``) so several targets on different scales weigh what the config says, not
    what their units say."""
    labels = dataset.labels(rows)
    loss: dict[str, str] = {}
    weights: dict[str, float] = {}
    for target in dataset.targets:
        name = dataset.output_name(target)
        weight = float(loss_weights.get(target.name, 1.0))
        if target.task == "multilabel":  # Keras averages the binary cross-entropy over the labels
            loss[name] = "binary_crossentropy"
            weights[name] = weight
        elif target.task == "classification":
            loss[name] = "sparse_categorical_crossentropy"
            weights[name] = weight
        else:
            loss[name] = "mse"
            weights[name] = weight / max(float(labels[name].var()), 1e-12)
    return loss, weights
