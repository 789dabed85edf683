"""Held-out metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import accuracy, brier, ece, evaluate, mae, nll, reliability_equal_count, rmse


def test_perfect_classifier() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    assert accuracy(probs, labels) == 1.0
    assert nll(probs, labels) == pytest.approx(0.0, abs=1e-9)
    assert brier(probs, labels) == 0.0
    assert ece(probs, labels) == 0.0


def test_uninformed_binary_classifier() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.full((4, 2), 0.5)
    assert nll(probs, labels) == pytest.approx(math.log(2))
    assert brier(probs, labels) == pytest.approx(0.5)  # 0.25 + 0.25 per row
    # confidence 0.5 everywhere; argmax picks class 0, right on half the rows
    assert ece(probs, labels) == pytest.approx(0.0)


def test_overconfident_classifier_has_calibration_error() -> None:
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1]] * 4)
    assert accuracy(probs, labels) == 0.5
    assert ece(probs, labels) == pytest.approx(0.4)
    assert nll(probs, labels) == pytest.approx(-(math.log(0.9) + math.log(0.1)) / 2)


def test_nll_is_finite_for_zero_probability() -> None:
    assert math.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1])))


def test_regression_metrics() -> None:
    pred = np.array([[1.0], [2.0], [4.0]])
    truth = np.array([[1.0], [3.0], [2.0]])
    assert rmse(pred, truth) == pytest.approx(math.sqrt(5 / 3))
    assert mae(pred, truth) == pytest.approx(1.0)


def test_metric_names_for_one_and_several_targets() -> None:
    probs = np.eye(2)[[0, 1]]
    outputs = {"probabilities": probs}
    truth = {"probabilities": np.array([0, 1])}
    one = evaluate(outputs, truth, [("probabilities", "y", "probabilities")], "test")
    assert set(one) == {"test_accuracy", "test_nll", "test_brier", "test_ece"}
    several = evaluate(
        {"a_probabilities": probs, "b_predictions": np.zeros((2, 1))},
        {"a_probabilities": np.array([0, 1]), "b_predictions": np.ones((2, 1))},
        [("a_probabilities", "a", "probabilities"), ("b_predictions", "b", "predictions")],
        "val",
    )
    assert several["val_a_accuracy"] == 1.0
    assert several["val_b_rmse"] == pytest.approx(1.0)
    assert "val_accuracy" not in several


def test_reliability_bins_hold_equal_row_counts_never_a_handful() -> None:
    rng = np.random.default_rng(0)
    confidence = np.concatenate([np.full(95, 0.99), rng.uniform(0.5, 0.9, 5)])  # 5 rows far from the rest
    probs = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.zeros(100, dtype=np.int64)
    conf, acc, counts = reliability_equal_count(probs, labels, min_rows=15)
    assert counts.tolist() == [17.0, 17.0, 17.0, 17.0, 16.0, 16.0]  # 100 rows // 15 = 6 bins
    assert counts.sum() == 100
    assert np.all(np.diff(conf) >= 0)
    np.testing.assert_allclose(acc, 1.0)
    # Too few rows for two bins of 15: one bin of all of them.
    _, _, few = reliability_equal_count(probs[:20], labels[:20], min_rows=15)
    assert few.tolist() == [20.0]
