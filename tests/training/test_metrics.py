"""Held-out metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import accuracy, brier, ece, evaluate, mae, nll, rmse


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
