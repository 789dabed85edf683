"""The fit controls a config switches on, as plain functions: the learning rate at each step, and
the metrics a member logs (what early stopping, the checkpoint and the plateau schedule may watch).

No TensorFlow here: the CLI checks monitors before any member trains, and the rate function is the
one the learning-rate callback applies, so both can be tested without a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from training.config import FitConfig, TrainConfig, member_base
from training.errors import ConfigError

if TYPE_CHECKING:
    from training.data import Dataset

# CosineDecay's floor today: the rate ends at 5 % of the initial one.
COSINE_ALPHA = 0.05


def scheduled_rate(fit: FitConfig, epoch: int, batch: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``batch`` (from 0) of ``epoch`` (from 0), before any plateau cut.

    Decay schedules step per batch as Keras' ExponentialDecay and CosineDecay do; ``piecewise``
    changes the rate at epoch boundaries; a warm-up multiplies the first ``warmup_epochs`` epochs
    by a ramp rising linearly to 1, so it goes in front of any schedule.
    """
    step = epoch * steps_per_epoch + batch
    decay_steps = max(1, fit.decay_epochs * steps_per_epoch)
    rate = fit.learning_rate
    if fit.schedule == "step":
        rate = fit.learning_rate * fit.decay_rate ** (step // decay_steps)
    elif fit.schedule == "exponential":
        rate = fit.learning_rate * fit.decay_rate ** (step / decay_steps)
    elif fit.schedule == "cosine":
        total = max(1, fit.epochs * steps_per_epoch)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        rate = fit.learning_rate * ((1.0 - COSINE_ALPHA) * cosine + COSINE_ALPHA)
    elif fit.schedule == "piecewise" and fit.piecewise:
        for start, value in fit.piecewise:
            if epoch >= start:
                rate = value
    warmup_steps = fit.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def drives_rate(fit: FitConfig) -> bool:
    """Whether the rate callback sets the rate at every step (else the rate is constant, or moved
    only by ReduceLROnPlateau, and a warm-up alone is applied)."""
    return fit.schedule not in ("none", "plateau") or fit.warmup_epochs > 0


def logged_metrics(dataset: Dataset) -> list[str]:
    """Every metric name a member's fit logs, as Keras names them (``val_`` for the early-stopping
    rows). One output: ``loss`` and, for a classifier, ``accuracy`` (a multi-label output also
    ``auc``); several: also per output."""
    names = ["loss"]
    outputs = [(dataset.output_name(t), t.task) for t in dataset.targets]
    if len(outputs) == 1:
        names += _task_metrics(outputs[0][1])
    else:
        for name, task in outputs:
            names.append(f"{name}_loss")
            names += [f"{name}_{metric}" for metric in _task_metrics(task)]
    return names + [f"val_{n}" for n in names]


def _task_metrics(task: str) -> list[str]:
    return {"classification": ["accuracy"], "multilabel": ["accuracy", "auc"]}.get(task, [])


def accuracy_metrics(dataset: Dataset) -> dict[str, list[Any]]:
    """The ``metrics`` argument of compile: accuracy for every classification output; for a
    multi-label output the binary accuracy over its labels (Keras' plain ``accuracy`` would be the
    categorical one) and the mean of its labels' ROC AUC."""
    import keras

    metrics: dict[str, list[Any]] = {}
    for target in dataset.targets:
        if target.task == "classification":
            metrics[dataset.output_name(target)] = ["accuracy"]
        elif target.task == "multilabel":
            metrics[dataset.output_name(target)] = [
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(multi_label=True, num_labels=len(target.classes), name="auc"),
            ]
    return metrics


def check_controls(config: TrainConfig, dataset: Dataset) -> None:
    """Controls that do not fit the data, as a ConfigError naming the defaults or the variant:
    a monitor the fit never logs (it would never stop nor checkpoint), a sigmoid head without a
    two-class target."""
    known = logged_metrics(dataset)
    binary = any(t.task == "classification" and len(t.classes) == 2 for t in dataset.targets)
    variants = len(config.members.variants)
    for i in range(max(1, variants)):
        member = member_base(config, i)
        where = f"members.variants[{i}]" if variants else "members.defaults"
        monitor = member.fit.early_stopping.monitor
        if monitor not in known:
            raise ConfigError(
                f"{where}.fit.early_stopping.monitor: {monitor!r} is not logged for this data "
                f"(logged: {', '.join(known)})"
            )
        if member.model.binary_head == "sigmoid" and not binary:
            raise ConfigError(f"{where}.model.binary_head: sigmoid needs a two-class target")
