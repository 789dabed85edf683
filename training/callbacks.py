"""Keras callbacks and learning-rate schedules of a member's fit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras

from training.config import FitConfig
from training.progress import MemberProgress, write_progress


class ProgressFile(keras.callbacks.Callback):  # type: ignore[misc]
    """Writes the member's epoch and validation loss to its progress file after every epoch."""

    def __init__(self, member_dir: Path, progress: MemberProgress) -> None:
        super().__init__()
        self.member_dir = member_dir
        self.progress = progress

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        val_loss = (logs or {}).get("val_loss")
        self.progress.state = "training"
        self.progress.epoch = epoch + 1
        if val_loss is not None and math.isfinite(float(val_loss)):
            self.progress.val_loss = float(val_loss)
            best = self.progress.best_val_loss
            self.progress.best_val_loss = float(val_loss) if best is None else min(best, float(val_loss))
        write_progress(self.member_dir, self.progress)


def learning_rate(
    fit: FitConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: a constant, or a schedule stepping per batch."""
    decay_steps = max(1, fit.decay_epochs * steps_per_epoch)
    if fit.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            fit.learning_rate, decay_steps, fit.decay_rate, staircase=True
        )
    if fit.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(fit.learning_rate, decay_steps, fit.decay_rate)
    if fit.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            fit.learning_rate, max(1, fit.epochs * steps_per_epoch), alpha=0.05
        )
    return fit.learning_rate


def optimizer(fit: FitConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(fit, steps_per_epoch)
    if fit.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=rate)
    if fit.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(learning_rate=rate)


def fit_callbacks(
    fit: FitConfig, member_dir: Path, progress: MemberProgress
) -> list[keras.callbacks.Callback]:
    """EarlyStopping (best weights back), best-only checkpoint, CSV history, TensorBoard, progress."""
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=fit.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(
            str(member_dir / "checkpoint.keras"), monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.CSVLogger(str(member_dir / "history.csv")),
        keras.callbacks.TensorBoard(
            log_dir=str(member_dir / "tensorboard"), write_graph=False, update_freq="epoch"
        ),
        ProgressFile(member_dir, progress),
    ]
    if fit.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=fit.decay_rate, patience=max(1, fit.patience // 2), min_lr=1e-6
            )
        )
    return callbacks
