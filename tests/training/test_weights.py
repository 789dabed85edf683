"""Member weights: on the simplex, and better than uniform when the members differ."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from serving.combine import combine_outputs
from training.config import AssembleConfig
from training.weights import given, greedy, optimized, shrink, uniform, validation_loss

KINDS = {"probabilities": "probabilities"}


def _members(seed: int = 0) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """One sharp, right member; one mildly right; one random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 300)
    onehot = np.eye(4)[labels]
    good = 0.85 * onehot + 0.15 / 4
    fair = 0.5 * onehot + 0.5 * rng.dirichlet(np.ones(4), 300)
    noise = rng.dirichlet(np.ones(4), 300)
    members = [{"probabilities": p.astype(np.float32)} for p in (noise, fair, good)]
    return members, {"probabilities": labels}


def test_optimized_weights_lie_on_the_simplex_and_beat_uniform() -> None:
    members, truth = _members()
    weights = optimized(members, truth, KINDS)
    assert weights.shape == (3,)
    assert np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[2] > weights[0]
    assert validation_loss(members, weights, truth, KINDS) < validation_loss(
        members, uniform(3), truth, KINDS
    )


def test_optimized_matches_a_brute_force_grid() -> None:
    members, truth = _members(1)
    weights = optimized(members, truth, KINDS)
    grid = [
        np.array([a, b, 1 - a - b])
        for a in np.linspace(0, 1, 21)
        for b in np.linspace(0, 1, 21)
        if a + b <= 1
    ]
    best = min(validation_loss(members, w + 1e-15, truth, KINDS) for w in grid)
    assert validation_loss(members, weights, truth, KINDS) <= best + 1e-3


def test_greedy_selection_prefers_the_best_member() -> None:
    members, truth = _members()
    weights = greedy(members, truth, KINDS, rounds=20)
    assert weights.sum() == pytest.approx(1.0)
    assert np.argmax(weights) == 2
    picks = weights / weights[weights > 0].min()
    assert np.allclose(picks, np.round(picks))  # weights are ratios of selection counts


def test_regression_objective_and_weights() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 1))
    near = {"predictions": truth + rng.normal(scale=0.1, size=truth.shape)}
    far = {"predictions": truth + rng.normal(scale=2.0, size=truth.shape)}
    kinds = {"predictions": "predictions"}
    weights = optimized([far, near], {"predictions": truth}, kinds)
    assert weights[1] > 0.9
    combined = combine_outputs([far, near], weights)["predictions"]
    assert np.mean((combined - truth) ** 2) < np.mean((near["predictions"] - truth) ** 2) + 1e-9


def test_given_and_uniform() -> None:
    assert np.allclose(given([1, 3]), [0.25, 0.75])
    assert np.allclose(uniform(4), 0.25)
    with pytest.raises(ValueError, match="positive"):
        given([0, 0])


def test_shrinkage_pulls_learned_weights_toward_uniform() -> None:
    np.testing.assert_allclose(shrink([1.0, 0.0, 0.0], 0.3), [0.8, 0.1, 0.1])
    np.testing.assert_allclose(shrink([0.6, 0.4], 0.0), [0.6, 0.4])
    np.testing.assert_allclose(shrink([0.9, 0.1, 0.0, 0.0], 1.0), [0.25] * 4)
    with pytest.raises(ValueError, match="shrinkage"):
        shrink([0.5, 0.5], 1.5)


def test_shrinkage_is_validated_in_the_config() -> None:
    assert AssembleConfig(shrinkage=0.2).shrinkage == 0.2
    with pytest.raises(ValidationError):
        AssembleConfig(shrinkage=-0.1)
