"""Keras callbacks of a member's fit: early stopping, checkpoint, logs, learning rate, progress."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import keras

from contracts.run_layout import MemberFolder
from training.config import FitConfig, LoggingConfig
from training.controls import drives_rate, scheduled_rate
from training.progress import MemberProgress, epoch_line, write_progress
from training.resume import ResumePoint, write_resume_point


def _finite(logs: dict[str, Any], key: str) -> float | None:
    value = logs.get(key)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _accuracy(logs: dict[str, Any], prefix: str) -> float | None:
    """The logged accuracy (the mean over classification outputs when there are several)."""
    values = [
        float(v)
        for k, v in logs.items()
        if k.startswith(prefix) and k.endswith("accuracy") and (prefix or not k.startswith("val_"))
    ]
    return sum(values) / len(values) if values else None


class ProgressFile(keras.callbacks.Callback):  # type: ignore[misc]
    """After every epoch: the member's losses, accuracy, learning rate and ETA to its progress
    file (the parent's live table reads it) and, every ``every`` epochs, one flushed line to
    ``stream`` (a pod's log)."""

    def __init__(
        self,
        member_dir: Path,
        progress: MemberProgress,
        *,
        every: int = 1,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.member_dir = member_dir
        self.progress = progress
        self.every = every
        self.stream = stream
        self._started = 0.0
        self._first_epoch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()
        self._first_epoch = self.progress.epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        p = self.progress
        p.state = "training"
        p.epoch = epoch + 1
        p.loss = _finite(logs, "loss")
        p.accuracy = _accuracy(logs, "")
        p.val_accuracy = _accuracy(logs, "val_")
        p.learning_rate = _finite(logs, "learning_rate")
        val_loss = _finite(logs, "val_loss")
        if val_loss is not None:
            p.val_loss = val_loss
            p.best_val_loss = val_loss if p.best_val_loss is None else min(p.best_val_loss, val_loss)
        done = p.epoch - self._first_epoch
        per_epoch = (time.monotonic() - self._started) / max(1, done)
        p.eta_seconds = round(per_epoch * max(0, p.epochs - p.epoch), 1)
        write_progress(self.member_dir, p)
        if self.stream is not None and (p.epoch % self.every == 0 or p.epoch == p.epochs):
            print(epoch_line(p), file=self.stream, flush=True)


class LearningRate(keras.callbacks.Callback):  # type: ignore[misc]
    """Sets the optimizer's rate from :func:`training.controls.scheduled_rate` at every step, and
    logs the rate in force at each epoch's end (history.csv and TensorBoard's LR curve).

    The optimizer holds a plain rate rather than a schedule object, so a checkpoint loads in a
    Keras without this package, and a resumed fit picks the schedule up at its epoch.
    """

    def __init__(self, fit: FitConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.fit = fit
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        warming = self._epoch < self.fit.warmup_epochs
        if drives_rate(self.fit) and (warming or self.fit.schedule not in ("none", "plateau")):
            self.model.optimizer.learning_rate = scheduled_rate(
                self.fit, self._epoch, batch, self.steps_per_epoch
            )
        elif self._epoch == self.fit.warmup_epochs and batch == 0 and self.fit.warmup_epochs:
            # Warm-up over: back to the configured rate, which the plateau schedule then cuts.
            self.model.optimizer.learning_rate = self.fit.learning_rate

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ResumePointFile(keras.callbacks.Callback):  # type: ignore[misc]
    """Records the epoch and monitored value of every checkpoint the best-only checkpoint writes,
    next to it, so ``train-member --resume`` knows where the checkpoint stands."""

    def __init__(self, checkpoint: keras.callbacks.ModelCheckpoint, member_dir: Path) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.member_dir = member_dir
        self._saved: float | None = checkpoint.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        best = self.checkpoint.best
        if best is not None and best != self._saved:
            self._saved = float(best)
            write_resume_point(self.member_dir, ResumePoint(epoch + 1, self.checkpoint.monitor, float(best)))


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):  # type: ignore[misc]
    """EarlyStopping that starts from a checkpoint's best value and weights, so a resumed fit
    neither stops on a worse epoch nor restores weights worse than the checkpoint's."""

    def __init__(self, start: ResumePoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start = start

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self.best = self.start.best
        self.best_epoch = self.start.epoch - 1
        if self.restore_best_weights:
            self.best_weights = self.model.get_weights()


def initial_learning_rate(fit: FitConfig, steps_per_epoch: int) -> float:
    """The rate the optimizer is built with: the rate of the first step."""
    return scheduled_rate(fit, 0, 0, steps_per_epoch) if drives_rate(fit) else fit.learning_rate


def optimizer(fit: FitConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = initial_learning_rate(fit, steps_per_epoch)
    if fit.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=rate)
    if fit.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(learning_rate=rate)


def fit_callbacks(
    fit: FitConfig,
    logging: LoggingConfig,
    member_dir: Path,
    progress: MemberProgress,
    steps_per_epoch: int,
    start: ResumePoint | None = None,
) -> list[keras.callbacks.Callback]:
    """Learning rate, EarlyStopping (best weights back), best-only checkpoint and its resume point,
    CSV history, TensorBoard, progress; ``start`` continues them from a checkpoint.

    The learning-rate callback comes first so the rate it logs reaches the history and TensorBoard.
    """
    stopping = fit.early_stopping
    watch: dict[str, Any] = {"monitor": stopping.monitor, "mode": stopping.mode}
    early_stopping_options: dict[str, Any] = {
        **watch,
        "min_delta": stopping.min_delta,
        "patience": fit.stopping_patience,
        "restore_best_weights": True,
    }
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(MemberFolder(member_dir).checkpoint),
        save_best_only=True,
        initial_value_threshold=start.best if start is not None else None,
        **watch,
    )
    callbacks: list[keras.callbacks.Callback] = [
        LearningRate(fit, steps_per_epoch),
        ResumedEarlyStopping(start, **early_stopping_options)
        if start is not None
        else keras.callbacks.EarlyStopping(**early_stopping_options),
        checkpoint,
        ResumePointFile(checkpoint, member_dir),
    ]
    if fit.schedule == "plateau":
        plateau = fit.plateau
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                **watch,
                factor=plateau.factor or fit.decay_rate,
                patience=plateau.patience or max(1, fit.stopping_patience // 2),
                min_lr=plateau.min_lr,
            )
        )
    callbacks += [
        keras.callbacks.CSVLogger(str(MemberFolder(member_dir).history), append=start is not None),
        keras.callbacks.TensorBoard(
            log_dir=str(MemberFolder(member_dir).tensorboard),
            write_graph=False,
            update_freq="epoch",
            histogram_freq=logging.histograms,
        ),
        ProgressFile(member_dir, progress, every=logging.every, stream=sys.stdout),
    ]
    return callbacks
