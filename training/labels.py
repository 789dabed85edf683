"""Multi-label targets: a named set of 0/1 columns, trained as one head with one sigmoid per column.

``data.labels: {tags: [urgent, billing, refund]}`` declares the target ``tags``; its output serves
``[n, 3]`` probabilities, one independent P(column = 1) per column, in the listed order. The config
checks here need no data (pydantic calls :func:`check_label_config`); the column checks need the
table (:func:`check_label_columns`, called by :func:`training.data.prepare`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.errors import DataError

if TYPE_CHECKING:
    from training.config import DataConfig

MIN_LABELS = 2


def check_label_config(config: DataConfig) -> None:
    """Raise ValueError (pydantic makes it one line) for a label set that cannot be trained."""
    seen: dict[str, str] = {}
    for name, columns in config.labels.items():
        where = f"data.labels.{name}"
        if len(columns) < MIN_LABELS:
            raise ValueError(
                f"{where}: a multi-label target needs at least {MIN_LABELS} columns, got {len(columns)}"
            )
        if name in config.targets:
            raise ValueError(f"{where}: {name!r} is also in data.targets; a label set is a target of its own")
        for column in columns:
            if column in seen:
                raise ValueError(f"{where}: column {column!r} is also a label of {seen[column]!r}")
            seen[column] = name
            if column in config.targets:
                raise ValueError(f"{where}: column {column!r} is also in data.targets")
            if column in (config.features or []):
                raise ValueError(f"{where}: column {column!r} is both a feature and a label")
    task = config.task
    if task == "multilabel":
        raise ValueError(
            "data.task: name the multi-label target, e.g. {tags: multilabel}, with data.labels.tags"
        )
    if isinstance(task, dict):
        for name, chosen in task.items():
            if chosen == "multilabel" and name not in config.labels:
                raise ValueError(f"data.task.{name}: multilabel needs its columns in data.labels.{name}")
            if name in config.labels and chosen != "multilabel":
                raise ValueError(f"data.task.{name}: a target in data.labels is multilabel, not {chosen}")


def label_columns(config: DataConfig) -> list[str]:
    """Every column some label set uses, in config order."""
    return [column for columns in config.labels.values() for column in columns]


def check_label_columns(frame: pd.DataFrame, config: DataConfig) -> None:
    """Raise DataError when a label column is missing or holds anything but 0/1 (missing is allowed:
    the row is dropped like a row with a missing target)."""
    for name, columns in config.labels.items():
        for column in columns:
            if column not in frame.columns:
                known = ", ".join(map(str, frame.columns))
                raise DataError(f"data.labels.{name}: column {column!r} not found; columns: {known}")
            values = frame[column].dropna()
            if pd.api.types.is_bool_dtype(values):
                continue
            numeric = pd.to_numeric(values, errors="coerce")
            bad = values[numeric.isna() | ~numeric.isin([0, 1])]
            if len(bad):
                raise DataError(
                    f"data.labels.{name}: column {column!r} must hold 0 or 1, found {bad.tolist()[0]!r}"
                )


def label_matrix(part: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The 0/1 truth of one label set: float32 [n, columns]."""
    return np.asarray(part[columns].to_numpy(dtype=np.float32))


def as_decisions(task: str, probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [n, classes], class indices [n]) for a reliability diagram. A multi-label
    output becomes one two-class row per (row, label) decision, so the diagram covers every label."""
    if task != "multilabel":
        return np.asarray(probabilities), np.asarray(truth).reshape(-1).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    return np.stack([1.0 - p, p], axis=1), (np.asarray(truth).reshape(-1) >= 0.5).astype(np.int64)
