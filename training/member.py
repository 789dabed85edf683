"""Train one member end to end: fit, checkpoint, export, verify the export, record its predictions.

It fits its rows, early-stops on its fold (or the validation split) and records its answers on
every row it never trained on, with their indices, and on the test split.

This is the whole of ``ensemble train-member --index I``: a local worker process and a Kubernetes
pod run exactly this, each reading the resolved config from ``<out>/config.yaml``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contracts.errors import one_line
from contracts.run_layout import OOF_PREFIX, OOF_ROWS, TEST_PREFIX, RunLayout, write_record
from contracts.run_records import MemberRecord, RowCounts, TrialRecord
from training.config import MemberConfig, TrainConfig, ensemble_name, member_base
from training.data import Dataset, prepare
from training.folds import MemberRows, member_rows
from training.layout import load_config
from training.progress import MemberProgress, write_progress

if TYPE_CHECKING:
    from training.search import PruningCallback
    from training.study import Trial


def member_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed per member."""
    return (seed * 1_000_003 + index * 7919 + 17) % (2**31 - 1)


def quiet_tensorflow(threads: int | None) -> None:
    """Silence TF's C++ logging and, when several workers share the cores, pin each to ``threads``.

    Must run before TensorFlow is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if threads:
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = str(threads)


def _dataset(
    features: dict[str, np.ndarray], labels: dict[str, np.ndarray], batch: int, seed: int | None
) -> Any:
    import tensorflow as tf

    from training.export import _to_tensors

    data = tf.data.Dataset.from_tensor_slices((_to_tensors(features), labels))
    if seed is not None:
        data = data.shuffle(len(next(iter(labels.values()))), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch).prefetch(2)


def _take(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in arrays.items()}


def output_kinds(dataset: Dataset) -> list[tuple[str, str, str]]:
    """(output name, target name, kind) per target, in order."""
    return [(dataset.output_name(t), t.name, t.kind) for t in dataset.targets]


@dataclass
class _Parts:
    """A member's features and labels on its fit, early-stopping and held-out rows, and on test."""

    x_fit: dict[str, np.ndarray]
    y_fit: dict[str, np.ndarray]
    x_stop: dict[str, np.ndarray]
    y_stop: dict[str, np.ndarray]
    x_held: dict[str, np.ndarray]
    y_held: dict[str, np.ndarray]
    x_test: dict[str, np.ndarray]
    y_test: dict[str, np.ndarray]

    @classmethod
    def of(cls, dataset: Dataset, rows: MemberRows) -> _Parts:
        return cls(
            dataset.features(rows.fit),
            dataset.labels(rows.fit),
            dataset.features(rows.early_stopping),
            dataset.labels(rows.early_stopping),
            dataset.features(rows.held_out),
            dataset.labels(rows.held_out),
            dataset.features(dataset.test_rows),
            dataset.labels(dataset.test_rows),
        )


@dataclass(frozen=True)
class _Fitted:
    """How the fit went, for member.json."""

    best_val_loss: float | None
    epochs_trained: int
    train_seconds: float


@dataclass
class _Exported:
    """A member's SavedModel and its answers, read back from the export, on held-out and test rows."""

    model_name: str
    version: int
    path: Path
    held: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    max_diff: float


def train_member(
    out_dir: Path,
    index: int,
    *,
    threads: int | None = None,
    resume: bool = False,
    study_storage: str | None = None,
) -> MemberRecord:
    """Train member ``index`` of the run in ``out_dir``; returns what it wrote to member.json.

    ``resume`` continues from the member's checkpoint and its epoch when it has one. With a search,
    the member is a trial of the study in ``study_storage`` (default: the run's SQLite study).
    """
    quiet_tensorflow(threads)
    import keras

    from training import search

    _pin_threads(threads)
    layout = RunLayout(out_dir)
    config = load_config(layout)
    member_dir = layout.member(index).root
    member_dir.mkdir(parents=True, exist_ok=True)
    progress = MemberProgress(index=index, state="starting")
    write_progress(member_dir, progress)
    trial = None
    try:
        started = time.monotonic()
        dataset = prepare(config.data, config.seed)
        seed = member_seed(config.seed, index)
        trial = search.start_trial(config, out_dir, index, seed, study_storage)
        hparams = trial.hparams if trial is not None else member_base(config, index)
        pruning = search.PruningCallback(trial) if trial is not None else None
        keras.utils.set_random_seed(seed)
        rows = member_rows(config, dataset, index, seed)
        parts = _Parts.of(dataset, rows)
        model, history = _fit(
            config, dataset, hparams, rows, parts, seed, member_dir, progress, pruning, resume
        )
        train_seconds = time.monotonic() - started

        progress.state = "exporting"
        write_progress(member_dir, progress)
        exported = _export(layout, f"{ensemble_name(config)}-m{index}", model, dataset, parts)
        _save_predictions(layout, index, rows, exported)
        val_losses = [v for v in history.history.get("val_loss", []) if np.isfinite(v)]
        fitted = _Fitted(
            best_val_loss=float(min(val_losses)) if val_losses else None,
            epochs_trained=progress.epoch,  # counting the epochs before a resume
            train_seconds=round(train_seconds, 3),
        )
        record = _member_record(config, dataset, index, seed, hparams, rows, parts, exported, fitted)
        if trial is not None:
            assert pruning is not None
            _finish_trial(trial, pruning, record)
        write_record(layout.member(index).record, record)
        progress.state = "done"
        write_progress(member_dir, progress)
        return record
    except BaseException as exc:
        if trial is not None:
            trial.finish("fail")
        progress.state = "failed"
        progress.message = one_line(exc)
        write_progress(member_dir, progress)
        raise


def _pin_threads(threads: int | None) -> None:
    """Hold TensorFlow's own thread pools to ``threads`` when several workers share the cores."""
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _fit(
    config: TrainConfig,
    dataset: Dataset,
    hparams: MemberConfig,
    rows: MemberRows,
    parts: _Parts,
    seed: int,
    member_dir: Path,
    progress: MemberProgress,
    pruning: PruningCallback | None,
    resume: bool,
) -> tuple[Any, Any]:
    """Build, compile and fit the member (from its checkpoint with ``resume``); the model and its history."""
    from training.architectures import build_model, losses
    from training.callbacks import fit_callbacks, optimizer
    from training.controls import accuracy_metrics
    from training.resume import starting_point

    fit = hparams.fit
    steps = int(np.ceil(len(rows.fit) / fit.batch_size))
    model = build_model(hparams.model, dataset, rows.fit)
    loss, loss_weights = losses(dataset, fit.loss_weights, rows.fit)
    model.compile(
        optimizer=optimizer(fit, steps),
        loss=loss,
        loss_weights=loss_weights,
        metrics=accuracy_metrics(dataset),
    )
    model, start = starting_point(member_dir, model, fit.early_stopping.monitor, resume=resume)
    progress.epochs = fit.epochs
    progress.epoch = start.epoch if start is not None else 0
    history = model.fit(
        _dataset(parts.x_fit, parts.y_fit, fit.batch_size, seed),
        validation_data=_dataset(parts.x_stop, parts.y_stop, 1024, None),
        epochs=fit.epochs,
        initial_epoch=progress.epoch,
        callbacks=[
            *fit_callbacks(fit, config.logging, member_dir, progress, steps, start),
            *([pruning.keras()] if pruning is not None else []),
        ],
        shuffle=False,  # the tf.data pipeline shuffles, with the member's seed
        verbose=0,
    )
    return model, history


def _export(layout: RunLayout, model_name: str, model: Any, dataset: Dataset, parts: _Parts) -> _Exported:
    """Save the next version of the member's SavedModel and check its answers against the model's."""
    from training.export import load_signature, next_version, run_signature, save_member, verify_round_trip

    version = next_version(layout.model_dir(model_name))
    export_path = layout.saved_model(model_name, version)
    save_member(model, dataset, export_path)
    signature = load_signature(export_path)
    held_pred = run_signature(signature, parts.x_held)
    test_pred = run_signature(signature, parts.x_test)
    max_diff = verify_round_trip(model, export_path, held_pred, parts.x_held)
    return _Exported(model_name, version, export_path, held_pred, test_pred, max_diff)


def _save_predictions(layout: RunLayout, index: int, rows: MemberRows, exported: _Exported) -> None:
    """The rows it never trained on and its answers there (the weights are learned on these), and
    its test answers for the report."""
    arrays: dict[str, Any] = {OOF_ROWS: rows.held_out}
    arrays.update({f"{OOF_PREFIX}{k}": v for k, v in exported.held.items()})
    arrays.update({f"{TEST_PREFIX}{k}": v for k, v in exported.test.items()})
    np.savez_compressed(layout.member(index).predictions, **arrays)


def _member_record(
    config: TrainConfig,
    dataset: Dataset,
    index: int,
    seed: int,
    hparams: MemberConfig,
    rows: MemberRows,
    parts: _Parts,
    exported: _Exported,
    fitted: _Fitted,
) -> MemberRecord:
    """member.json: the member's identity, rows and metrics, and how its fit and export went."""
    from training.metrics import evaluate

    kinds = output_kinds(dataset)
    stopping = np.isin(rows.held_out, rows.early_stopping)
    stop_pred = {k: v[stopping] for k, v in exported.held.items()}
    labels = dataset.label_names()
    metrics = {
        **evaluate(stop_pred, parts.y_stop, kinds, "val", labels),
        **evaluate(exported.held, parts.y_held, kinds, "oof", labels),
        **evaluate(exported.test, parts.y_test, kinds, "test", labels),
    }
    return MemberRecord(
        index=index,
        model_name=exported.model_name,
        version=exported.version,
        seed=seed,
        hyperparameters=hparams.model_dump(mode="json"),
        bootstrap=config.members.bootstrap,
        fold=rows.fold,
        rows=RowCounts(
            fit=len(rows.fit), early_stopping=len(rows.early_stopping), out_of_fold=len(rows.held_out)
        ),
        metrics=metrics,
        best_val_loss=fitted.best_val_loss,
        epochs_trained=fitted.epochs_trained,
        train_seconds=fitted.train_seconds,
        export_path=str(exported.path.resolve()),
        export_max_abs_diff=exported.max_diff,
    )


def _finish_trial(trial: Trial, pruning: PruningCallback, record: MemberRecord) -> None:
    """Record the trial in member.json and tell the study how it ended."""
    record.trial = TrialRecord(number=trial.number, pruned_at_epoch=pruning.pruned_at)
    if pruning.pruned_at is not None:
        trial.finish("pruned")
    else:  # a trial whose every val_loss was NaN has no value to rank it by
        best = record.best_val_loss
        trial.finish("complete" if best is not None else "fail", best)
