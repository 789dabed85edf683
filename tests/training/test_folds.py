"""Cross-fitting folds: a pure function of config, data, seed and member index."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import prepare
from training.errors import DataError
from training.folds import assign_folds, fold_of, fold_sizes, member_rows
from training.member import member_seed


def _config(**tree: Any) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"source": "sklearn:digits"}, **tree})


FIVE_FOLDS = {"source": "sklearn:digits", "split": {"folds": 5}}


def test_folds_partition_the_non_test_rows_stratified_and_fixed_by_the_seed() -> None:
    config = _config(members={"count": 5}, data=FIVE_FOLDS)
    dataset = prepare(config.data, config.seed)
    assert len(dataset.val_rows) == 0  # no validation split with cross-fitting
    folds = assign_folds(dataset, config)
    assert folds.shape == dataset.train_rows.shape
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    assert np.array_equal(folds, assign_folds(prepare(config.data, config.seed), config))
    other = _config(members={"count": 5}, data=FIVE_FOLDS, seed=1)
    assert not np.array_equal(folds, assign_folds(prepare(other.data, other.seed), other))
    labels = dataset.frame["target"].to_numpy()[dataset.train_rows]
    for digit in range(10):
        per_fold = np.bincount(folds[labels == digit], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert sum(fold_sizes(dataset, config)) == len(dataset.train_rows)


def test_each_member_early_stops_on_its_own_fold_and_never_trains_on_it() -> None:
    config = _config(members={"count": 5}, data=FIVE_FOLDS)
    dataset = prepare(config.data, config.seed)
    everything: list[np.ndarray] = []
    for index in range(5):
        rows = member_rows(config, dataset, index, member_seed(config.seed, index))
        assert rows.fold == index == fold_of(config, index)
        assert np.array_equal(rows.early_stopping, rows.held_out)
        assert not np.intersect1d(rows.fit, rows.held_out).size
        assert not np.intersect1d(rows.held_out, dataset.test_rows).size
        assert np.array_equal(np.union1d(rows.fit, rows.held_out), dataset.train_rows)
        everything.append(rows.held_out)
    joined = np.concatenate(everything)
    assert len(joined) == len(np.unique(joined)) == len(dataset.train_rows)  # one holder per row


def test_more_members_than_folds_share_folds() -> None:
    config = _config(members={"count": 5})  # the default: 3 folds for 5 members
    assert [fold_of(config, i) for i in range(5)] == [0, 1, 2, 0, 1]
    dataset = prepare(config.data, config.seed)
    first, fourth = (member_rows(config, dataset, i, member_seed(0, i)) for i in (0, 3))
    assert np.array_equal(first.held_out, fourth.held_out)


def test_search_candidates_get_folds_by_the_members_kept() -> None:
    config = _config(search={"trials": 7, "keep": 3, "space": {"model.width": {"choices": [8, 16]}}})
    assert config.fold_count == 3
    assert [fold_of(config, i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_bootstrap_members_also_hold_out_their_out_of_bag_rows() -> None:
    config = _config(members={"count": 4, "bootstrap": True})
    dataset = prepare(config.data, config.seed)
    rows = member_rows(config, dataset, 2, member_seed(config.seed, 2))
    assert len(rows.fit) == len(dataset.train_rows) - len(rows.early_stopping)  # a sample with repeats
    assert len(np.unique(rows.fit)) < len(rows.fit)
    assert np.isin(rows.early_stopping, rows.held_out).all()
    assert len(rows.held_out) > len(rows.early_stopping)
    assert not np.intersect1d(rows.fit, rows.held_out).size
    assert np.array_equal(np.union1d(np.unique(rows.fit), rows.held_out), dataset.train_rows)


def test_holdout_is_the_single_validation_split() -> None:
    config = _config(data={"source": "sklearn:digits", "split": {"method": "holdout"}})
    dataset = prepare(config.data, config.seed)
    assert len(dataset.val_rows) == int(np.ceil(0.15 * len(dataset.frame)))
    rows = member_rows(config, dataset, 3, member_seed(config.seed, 3))
    assert rows.fold is None
    assert np.array_equal(rows.held_out, dataset.val_rows)
    assert np.array_equal(rows.fit, dataset.train_rows)
    assert fold_sizes(dataset, config) == []


def test_the_test_rows_are_the_same_either_way() -> None:
    cross = prepare(_config().data, 0)
    holdout = prepare(_config(data={"source": "sklearn:digits", "split": {"method": "holdout"}}).data, 0)
    assert np.array_equal(cross.test_rows, holdout.test_rows)
    assert cross.test_fingerprint == holdout.test_fingerprint


def test_too_few_rows_for_the_folds_is_one_line() -> None:
    config = TrainConfig.model_validate({"data": {"source": "penguins", "split": {"folds": 60}}})
    dataset = prepare(config.data, config.seed)
    with pytest.raises(DataError) as info:
        assign_folds(dataset, config)
    message = str(info.value)
    assert message.startswith("too few rows for 60 folds") or message.startswith(
        "too few rows for 60 stratified folds"
    )
    assert "data.split.folds" in message
    assert "\n" not in message
