"""Checking a table against the config, and splitting it deterministically by seed.

The table comes from :mod:`training.tables`; multi-label sets are checked by :mod:`training.labels`.

Everything here is pandas and numpy, no TensorFlow: the CLI validates data before training starts,
and each worker re-derives exactly the same split from the same seed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from contracts.run_records import DatasetRows, DatasetSummary, InputSummary, SplitSummary
from training.config import DataConfig, Task
from training.errors import DataError
from training.labels import check_label_columns, label_columns, label_matrix
from training.tables import read_table

Kind = Literal["numeric", "categorical"]
MIN_ROWS = 20


@dataclass(frozen=True)
class InputGroup:
    """One named model input: a single column, or several numeric columns side by side."""

    name: str
    columns: list[str]
    kind: Kind

    @property
    def dtype(self) -> str:
        return "float32" if self.kind == "numeric" else "string"

    @property
    def shape(self) -> list[int]:
        """The served shape: one value per instance for a single column (so a record is written
        ``{"age": 61}``), a list of k values for a group of k columns."""
        return [-1] if len(self.columns) == 1 else [-1, len(self.columns)]

    def summary(self) -> InputSummary:
        return InputSummary(
            name=self.name, dtype=self.dtype, shape=self.shape, kind=self.kind, columns=self.columns
        )


@dataclass(frozen=True)
class Target:
    """A target, its task, and its class labels (classification) or its 0/1 columns (multilabel),
    in output order."""

    name: str
    task: Task
    classes: list[str] = field(default_factory=list)

    @property
    def output_name(self) -> str:
        return "predictions" if self.task == "regression" else "probabilities"

    @property
    def kind(self) -> str:
        """The manifest's output kind: probabilities, multilabel or predictions."""
        return {"classification": "probabilities", "multilabel": "multilabel"}.get(self.task, "predictions")


@dataclass
class Dataset:
    """A checked table with its inputs, targets and a fixed train/validation/test split.

    With cross-fitting there is no validation split: ``train_rows`` are every row outside the test
    split, and :mod:`training.folds` cuts them into the members' folds.
    """

    source: str
    frame: pd.DataFrame
    inputs: list[InputGroup]
    targets: list[Target]
    train_rows: npt.NDArray[np.int64]
    val_rows: npt.NDArray[np.int64]
    test_rows: npt.NDArray[np.int64]
    fingerprint: str
    test_fingerprint: str
    dropped_rows: int = 0

    def output_name(self, target: Target) -> str:
        """``probabilities`` / ``predictions``, prefixed by the target when there are several."""
        if len(self.targets) == 1:
            return target.output_name
        return f"{safe_name(target.name)}_{target.output_name}"

    def label_names(self) -> dict[str, list[str]]:
        """Per multi-label output, its label columns in output order."""
        return {self.output_name(t): t.classes for t in self.targets if t.task == "multilabel"}

    def features(self, rows: npt.NDArray[np.int64]) -> dict[str, np.ndarray]:
        """Raw input arrays for ``rows``, each [n, columns]: float32 with NaN, or strings with '' for
        missing. (The exported signature takes a single column as [n]; see ``InputGroup.shape``.)"""
        part = self.frame.iloc[rows]
        arrays: dict[str, np.ndarray] = {}
        for group in self.inputs:
            if group.kind == "numeric":
                arrays[group.name] = part[group.columns].to_numpy(dtype=np.float32, na_value=np.nan)
            else:
                arrays[group.name] = np.stack([_as_strings(part[c]) for c in group.columns], axis=1).astype(
                    object
                )
        return arrays

    def labels(self, rows: npt.NDArray[np.int64]) -> dict[str, np.ndarray]:
        """Per output name: class indices (int64), 0/1 float32 [n, labels] or float32 values [n, 1]."""
        part = self.frame.iloc[rows]
        out: dict[str, np.ndarray] = {}
        for target in self.targets:
            if target.task == "multilabel":
                out[self.output_name(target)] = label_matrix(part, target.classes)
            elif target.task == "classification":
                lookup = {c: i for i, c in enumerate(target.classes)}
                out[self.output_name(target)] = np.array(
                    [lookup[v] for v in _as_strings(part[target.name])], dtype=np.int64
                )
            else:
                values = part[target.name].to_numpy(dtype=np.float32)
                out[self.output_name(target)] = values.reshape(-1, 1)
        return out

    def summary(self, split: SplitSummary) -> DatasetSummary:
        """What ``<out>/dataset.json`` holds, with ``split`` (how the rows were split into folds)."""
        return DatasetSummary(
            source=self.source,
            fingerprint=self.fingerprint,
            test_fingerprint=self.test_fingerprint,
            targets=[t.name for t in self.targets],
            tasks={t.name: t.task for t in self.targets},
            classes={t.name: t.classes for t in self.targets if t.task == "classification"},
            labels={t.name: t.classes for t in self.targets if t.task == "multilabel"},
            outputs={t.name: self.output_name(t) for t in self.targets},
            rows=DatasetRows(
                total=len(self.frame),
                train=len(self.train_rows),
                validation=len(self.val_rows),
                test=len(self.test_rows),
                dropped_missing_target=self.dropped_rows,
            ),
            inputs=[g.summary() for g in self.inputs],
            split=split,
        )


def safe_name(column: str) -> str:
    """A column name as a signature key: letters, digits and underscores only."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", str(column)).strip("_")
    if not name or not name[0].isalpha():
        name = f"f_{name}"
    return name


def _as_strings(series: pd.Series) -> list[str]:
    """Category values as strings; missing becomes ''. Integral floats lose their '.0'."""
    out = []
    for value in series.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            out.append("")
        elif isinstance(value, float) and value.is_integer():
            out.append(str(int(value)))
        else:
            out.append(str(value))
    return out


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _infer_task(series: pd.Series) -> Task:
    if _is_categorical(series):
        return "classification"
    values = series.dropna()
    integral = pd.api.types.is_integer_dtype(values) or bool((values == values.round()).all())
    if integral and values.nunique() <= 20:
        return "classification"
    return "regression"


def _sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _targets(frame: pd.DataFrame, config: DataConfig, default: list[str]) -> list[str]:
    """The target columns; a config with label sets only has none (the set's default is not added)."""
    targets = config.targets or ([] if config.labels else default)
    if not targets and not config.labels:
        raise DataError("no target: pass --target COLUMN (or data.targets in the config)")
    for name in targets:
        if name not in frame.columns:
            raise DataError(
                f"target column {name!r} not found; columns: {', '.join(map(str, frame.columns))}"
            )
    if len(set(targets)) != len(targets):
        raise DataError("a target is listed twice")
    return targets


def _task_for(name: str, config: DataConfig, series: pd.Series) -> Task:
    task = config.task
    if isinstance(task, dict):
        unknown = set(task) - set(config.targets) - set(config.labels)
        if unknown and config.targets:
            raise DataError(f"data.task names columns that are not targets: {', '.join(sorted(unknown))}")
        chosen = task.get(name)
    else:
        chosen = task
    if chosen is None:
        chosen = _infer_task(series)
    if chosen == "regression" and _is_categorical(series):
        raise DataError(f"regression target {name!r} is not numeric")
    return chosen


def _feature_columns(frame: pd.DataFrame, config: DataConfig, targets: list[str]) -> list[str]:
    for column in [*config.drop, *config.categorical, *(config.features or [])]:
        if column not in frame.columns:
            raise DataError(f"unknown column {column!r}; columns: {', '.join(map(str, frame.columns))}")
    overlap = set(config.features or []) & set(targets)
    if overlap:
        raise DataError(f"column {sorted(overlap)[0]!r} is both a feature and a target")
    if config.features is not None:
        columns = [c for c in config.features if c not in config.drop]
    else:
        held = {*targets, *label_columns(config), *config.drop}
        columns = [c for c in frame.columns if c not in held]
    if not columns:
        raise DataError("no feature columns left")
    return [str(c) for c in columns]


def _input_groups(
    frame: pd.DataFrame, config: DataConfig, columns: list[str], default: dict[str, list[str]] | None
) -> list[InputGroup]:
    kinds: dict[str, Kind] = {
        c: "categorical" if c in config.categorical or _is_categorical(frame[c]) else "numeric"
        for c in columns
    }
    if config.inputs is not None:
        grouping = config.inputs
    else:  # a bundled set's grouping, less any column the config dropped
        grouping = {name: [c for c in members if c in kinds] for name, members in (default or {}).items()}
    groups: list[InputGroup] = []
    grouped: set[str] = set()
    for name, members in grouping.items():
        if safe_name(name) != name:
            raise DataError(f"input name {name!r} must use letters, digits and underscores only")
        for column in members:
            if column not in kinds:
                raise DataError(
                    f"column {column!r} in input group {name!r} is not a feature "
                    "(unknown, dropped or a target)"
                )
            if kinds[column] != "numeric":
                raise DataError(
                    f"input group {name!r}: column {column!r} is categorical; group numeric columns"
                )
            if column in grouped:
                raise DataError(f"column {column!r} is in two input groups")
            grouped.add(column)
        if members:
            groups.append(InputGroup(name, list(members), "numeric"))
    for column in columns:
        if column not in grouped:
            groups.append(InputGroup(safe_name(column), [column], kinds[column]))
    names = [g.name for g in groups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"two inputs share the name {duplicates[0]!r}; rename a column or group")
    for group in groups:
        if group.kind == "numeric":
            for column in group.columns:
                if not pd.api.types.is_numeric_dtype(frame[column]) and column not in config.categorical:
                    raise DataError(f"column {column!r} is not numeric")
    return groups


def _split(
    n_rows: int, strata: list[str] | None, fractions: tuple[float, float], seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train, validation and test rows; a validation fraction of 0 (cross-fitting) leaves it empty.

    The test rows depend on the seed and the test fraction only, so both ways of validating
    report on the same rows.
    """
    from sklearn.model_selection import train_test_split

    val_fraction, test_fraction = fractions
    rows = np.arange(n_rows, dtype=np.int64)
    n_test = int(np.ceil(test_fraction * n_rows))
    n_val = int(np.ceil(val_fraction * n_rows))
    if n_rows < MIN_ROWS or n_rows - n_test - n_val < 10:
        raise DataError(f"too few rows for the split: {n_rows} rows (need at least {MIN_ROWS})")
    if strata is not None:
        counts = pd.Series(strata).value_counts()
        if counts.min() < 3:
            raise DataError(
                f"too few rows for a stratified split: class {counts.idxmin()!r} has {counts.min()} row(s), "
                "need at least 3"
            )
        if min(n_test, n_val if n_val else n_test) < len(counts):
            held = "each of validation and test" if n_val else "the test split"
            raise DataError(
                f"too few rows for the split: {len(counts)} classes need at least {len(counts)} rows "
                f"in {held}"
            )
    strata_arr = np.asarray(strata) if strata is not None else None
    rest, test = train_test_split(rows, test_size=n_test, random_state=seed, stratify=strata_arr)
    if not n_val:
        return np.sort(rest), np.zeros(0, dtype=np.int64), np.sort(test)
    rest_strata = strata_arr[rest] if strata_arr is not None else None
    train, val = train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=rest_strata)
    return np.sort(train), np.sort(val), np.sort(test)


def prepare(config: DataConfig, seed: int) -> Dataset:
    """Read, check and split the data. Raises DataError with a one-line message."""
    raw, default_targets, default_inputs = read_table(config.source)
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c) for c in raw.columns]
    fingerprint = _sha256(raw)
    targets = _targets(raw, config, default_targets)
    check_label_columns(raw, config)
    columns = _feature_columns(raw, config, targets)
    truth = [*targets, *label_columns(config)]
    missing_target = raw[truth].isna().any(axis=1) | (raw[truth].astype(str) == "").any(axis=1)
    frame = raw.loc[~missing_target, [*columns, *truth]].reset_index(drop=True)
    dropped = int(missing_target.sum())

    target_infos = []
    for name in targets:
        task = _task_for(name, config, frame[name])
        classes: list[str] = []
        if task == "classification":
            values = frame[name]
            uniques = sorted(values.unique().tolist(), key=lambda v: (str(type(v)), v))
            classes = _as_strings(pd.Series(uniques))
            if len(classes) < 2:
                raise DataError(f"classification target {name!r} has only one class")
        target_infos.append(Target(name, task, classes))
    target_infos += [Target(name, "multilabel", list(cols)) for name, cols in config.labels.items()]

    groups = _input_groups(frame, config, columns, default_inputs)
    first_class = next((t for t in target_infos if t.task == "classification"), None)
    strata = _as_strings(frame[first_class.name]) if first_class is not None else None
    train, val, test = _split(len(frame), strata, (config.split.validation_fraction, config.split.test), seed)
    test_fingerprint = _sha256(frame.iloc[test])
    return Dataset(
        source=config.source,
        frame=frame,
        inputs=groups,
        targets=target_infos,
        train_rows=train,
        val_rows=val,
        test_rows=test,
        fingerprint=fingerprint,
        test_fingerprint=test_fingerprint,
        dropped_rows=dropped,
    )
