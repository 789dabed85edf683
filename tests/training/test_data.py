"""Data loading, checks and the deterministic, stratified split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.config import DataConfig
from training.data import prepare, safe_name
from training.errors import DataError


def _frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "height cm": rng.normal(170, 10, rows),
            "colour": np.array(["red", "green", None], dtype=object)[rng.integers(0, 3, rows)],
            "constant": np.ones(rows),
            "label": rng.choice(["a", "b", "c"], rows, p=[0.6, 0.3, 0.1]),
            "score": rng.normal(0, 1, rows),
        }
    )


def _csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_split_is_deterministic_per_seed_and_partitions_the_rows() -> None:
    config = DataConfig.model_validate({"source": "sklearn:digits", "split": {"method": "holdout"}})
    first, again, other = prepare(config, 3), prepare(config, 3), prepare(config, 4)
    for name in ("train_rows", "val_rows", "test_rows"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.test_rows, other.test_rows)
    everything = np.concatenate([first.train_rows, first.val_rows, first.test_rows])
    assert sorted(everything.tolist()) == list(range(len(first.frame)))
    assert first.test_fingerprint == again.test_fingerprint != other.test_fingerprint
    assert first.fingerprint == other.fingerprint


def test_split_is_stratified() -> None:
    config = DataConfig.model_validate({"source": "sklearn:digits", "split": {"method": "holdout"}})
    dataset = prepare(config, 0)
    labels = dataset.frame["target"].to_numpy()
    overall = np.bincount(labels, minlength=10) / len(labels)
    for rows in (dataset.val_rows, dataset.test_rows):
        counts = np.bincount(labels[rows], minlength=10)
        assert np.all(np.abs(counts - overall * len(rows)) <= 1.0)


def test_digits_default_grouping_is_one_pixels_input() -> None:
    dataset = prepare(DataConfig(source="sklearn:digits"), 0)
    assert [(g.name, g.dtype, g.shape) for g in dataset.inputs] == [("pixels", "float32", [-1, 64])]
    features = dataset.features(dataset.test_rows)
    assert features["pixels"].shape == (len(dataset.test_rows), 64)
    assert dataset.labels(dataset.test_rows)["probabilities"].dtype == np.int64


def test_csv_with_own_columns_kinds_names_and_missing(tmp_path: Path) -> None:
    config = DataConfig(source=_csv(tmp_path, _frame()), targets=["label", "score"])
    dataset = prepare(config, 0)
    assert {g.name: g.kind for g in dataset.inputs} == {
        "height_cm": "numeric",
        "colour": "categorical",
        "constant": "numeric",
    }
    assert [(t.name, t.task) for t in dataset.targets] == [
        ("label", "classification"),
        ("score", "regression"),
    ]
    assert dataset.targets[0].classes == ["a", "b", "c"]
    assert [dataset.output_name(t) for t in dataset.targets] == ["label_probabilities", "score_predictions"]
    # Served one value per instance; the training arrays stay [n, 1] for the Keras model.
    assert {g.name: g.shape for g in dataset.inputs} == {"height_cm": [-1], "colour": [-1], "constant": [-1]}
    colour = dataset.features(np.arange(len(dataset.frame)))["colour"]
    assert colour.shape == (60, 1)
    assert "" in set(colour[:, 0])


def test_rows_with_a_missing_target_are_dropped(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[:4, "label"] = None
    dataset = prepare(DataConfig(source=_csv(tmp_path, frame), targets=["label"]), 0)
    assert dataset.dropped_rows == 5
    assert len(dataset.frame) == 55


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"targets": ["nope"]}, "target column 'nope' not found"),
        ({"targets": ["label"], "drop": ["ghost"]}, "unknown column 'ghost'"),
        ({"targets": ["label"], "task": "regression"}, "regression target 'label' is not numeric"),
        ({"targets": ["label"], "inputs": {"g": ["colour"]}}, "is categorical"),
        ({"targets": ["label"], "features": ["label"]}, "both a feature and a target"),
    ],
)
def test_bad_columns_are_one_line_errors(tmp_path: Path, change: dict[str, object], message: str) -> None:
    config = DataConfig.model_validate({"source": _csv(tmp_path, _frame()), **change})
    with pytest.raises(DataError, match=message) as info:
        prepare(config, 0)
    assert "\n" not in str(info.value)


def test_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too few rows"):
        prepare(DataConfig(source=_csv(tmp_path, _frame(rows=12)), targets=["score"]), 0)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare(DataConfig(source=str(tmp_path / "missing.csv"), targets=["y"]), 0)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"definitely not parquet")
    with pytest.raises(DataError, match="cannot read"):
        prepare(DataConfig(source=str(broken), targets=["y"]), 0)
    with pytest.raises(DataError, match="unknown bundled"):
        prepare(DataConfig(source="sklearn:nope"), 0)


def test_penguins_has_categorical_inputs_with_missing_values() -> None:
    dataset = prepare(DataConfig(source="penguins"), 0)
    kinds = {g.name: g.kind for g in dataset.inputs}
    assert kinds["island"] == kinds["sex"] == "categorical"
    assert kinds["bill_length_mm"] == "numeric"
    features = dataset.features(np.arange(len(dataset.frame)))
    assert np.isnan(features["bill_length_mm"]).any()
    assert "" in set(features["sex"][:, 0])


def test_safe_name() -> None:
    assert safe_name("mean radius") == "mean_radius"
    assert safe_name("2nd") == "f_2nd"


def test_bundled_grouping_follows_dropped_columns_and_own_grouping_is_checked() -> None:
    dataset = prepare(DataConfig(source="sklearn:digits", drop=["pixel_0_0", "pixel_0_7"]), 0)
    assert [(g.name, g.shape) for g in dataset.inputs] == [("pixels", [-1, 62])]
    with pytest.raises(DataError, match="is not a feature"):
        prepare(DataConfig(source="sklearn:digits", drop=["pixel_0_0"], inputs={"p": ["pixel_0_0"]}), 0)
