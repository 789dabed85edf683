"""Cross-fitting: which rows each member fits, early-stops on, and never sees.

The non-test rows are cut into ``folds`` folds by the run's seed (stratified by the first
classification target). Member ``i`` early-stops and checkpoints on fold ``i % folds`` and never
trains on it; with bootstrap it also never sees the rows its sample left out (out of bag). All of
it is a pure function of the config, the data and the member index, so a worker process, a pod of
an Indexed Job and ``assemble`` derive the very same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.config import TrainConfig
from training.data import Dataset
from training.errors import DataError

Rows = npt.NDArray[np.int64]

# Below this many rows a fold's early stopping and its out-of-fold predictions are mostly noise.
MIN_FOLD_ROWS = 5


@dataclass(frozen=True)
class MemberRows:
    """The rows of one member, as indices into the dataset's frame."""

    fit: Rows
    """Rows it trains on (a bootstrap sample repeats some)."""
    early_stopping: Rows
    """Rows it early-stops and checkpoints on: its fold, or the validation split."""
    held_out: Rows
    """Every non-test row it never trained on, sorted: its fold plus, with bootstrap, its out-of-bag rows."""
    fold: int | None
    """Its fold; None with a holdout validation split."""


def fold_of(config: TrainConfig, index: int) -> int | None:
    """The fold member (or search candidate) ``index`` holds out; None with a holdout split."""
    if config.data.split.method != "cross_fit":
        return None
    return index % config.fold_count


def _strata(dataset: Dataset, rows: Rows) -> npt.NDArray[np.int64] | None:
    first = next((t for t in dataset.targets if t.task == "classification"), None)
    if first is None:
        return None
    return dataset.labels(rows)[dataset.output_name(first)]


def assign_folds(dataset: Dataset, config: TrainConfig) -> npt.NDArray[np.int64]:
    """The fold of every row in ``dataset.train_rows`` (same order). Raises DataError if too few rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    count = config.fold_count
    rows = dataset.train_rows
    if len(rows) < count * MIN_FOLD_ROWS:
        raise DataError(
            f"too few rows for {count} folds: {len(rows)} rows outside the test split, need at least "
            f"{count * MIN_FOLD_ROWS} (set data.split.folds lower, or data.split.method: holdout)"
        )
    strata = _strata(dataset, rows)
    if strata is not None:
        classes, counts = np.unique(strata, return_counts=True)
        if counts.min() < count:
            first = next(t for t in dataset.targets if t.task == "classification")
            name = first.classes[int(classes[int(np.argmin(counts))])]
            raise DataError(
                f"too few rows for {count} stratified folds: class {name!r} has {counts.min()} row(s) "
                "outside the test split (set data.split.folds lower, or data.split.method: holdout)"
            )
        splitter = StratifiedKFold(n_splits=count, shuffle=True, random_state=config.seed)
        parts = splitter.split(np.zeros(len(rows)), strata)
    else:
        parts = KFold(n_splits=count, shuffle=True, random_state=config.seed).split(np.zeros(len(rows)))
    folds = np.empty(len(rows), dtype=np.int64)
    for fold, (_, held) in enumerate(parts):
        folds[held] = fold
    return folds


def member_rows(config: TrainConfig, dataset: Dataset, index: int, seed: int) -> MemberRows:
    """Member ``index``'s rows; ``seed`` is its own seed (it draws the bootstrap sample)."""
    fold = fold_of(config, index)
    if fold is None:
        pool, early_stopping = dataset.train_rows, dataset.val_rows
    else:
        in_fold = assign_folds(dataset, config) == fold
        pool, early_stopping = dataset.train_rows[~in_fold], dataset.train_rows[in_fold]
    fit = pool
    held_out = early_stopping
    if config.members.bootstrap:
        rng = np.random.default_rng(seed)
        fit = np.sort(rng.choice(pool, size=len(pool), replace=True))
        if fold is not None:  # out-of-bag rows are as unseen as the fold, and cleaner: not selected on
            held_out = np.union1d(early_stopping, np.setdiff1d(pool, fit))
    return MemberRows(fit=fit, early_stopping=early_stopping, held_out=np.sort(held_out), fold=fold)


def fold_sizes(dataset: Dataset, config: TrainConfig) -> list[int]:
    """Rows per fold (for dataset.json and the console); empty with a holdout split."""
    if config.data.split.method != "cross_fit":
        return []
    return [int(n) for n in np.bincount(assign_folds(dataset, config), minlength=config.fold_count)]
