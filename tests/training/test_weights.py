"""Member weights on out-of-fold answers: on the simplex, and better than uniform when members differ."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from contracts.combine import combine_outputs, renormalized
from training.assemble_config import AssembleConfig
from training.oof import OutOfFold
from training.weights import balanced, given, greedy, optimized, shrink, uniform

KINDS = {"probabilities": "probabilities"}


def _table(
    members: list[dict[str, np.ndarray]], truth: dict[str, np.ndarray], held: np.ndarray | None = None
) -> OutOfFold:
    """Members' answers on rows 0..n-1; ``held[m, r]`` says member m held row r out (default: all)."""
    rows = len(next(iter(truth.values())))
    held = np.ones((len(members), rows), dtype=bool) if held is None else held
    member_rows = [np.flatnonzero(h).astype(np.int64) for h in held]
    answers = [{k: v[own] for k, v in m.items()} for m, own in zip(members, member_rows, strict=True)]
    kinds = {name: "probabilities" if v.ndim == 1 else "predictions" for name, v in truth.items()}
    return OutOfFold.build(member_rows, answers, lambda r: {k: v[r] for k, v in truth.items()}, kinds)


def _members(seed: int = 0, rows: int = 300) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """One random member, one mildly right, one sharp and right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, rows)
    onehot = np.eye(4)[labels]
    good = 0.85 * onehot + 0.15 / 4
    fair = 0.5 * onehot + 0.5 * rng.dirichlet(np.ones(4), rows)
    noise = rng.dirichlet(np.ones(4), rows)
    members = [{"probabilities": p.astype(np.float32)} for p in (noise, fair, good)]
    return members, {"probabilities": labels}


def test_a_row_is_combined_over_the_members_that_held_it_out_as_the_gateway_renormalises() -> None:
    members, truth = _members(rows=40)
    held = np.random.default_rng(1).random((3, 40)) < 0.6
    held[:, 0] = [True, False, False]
    held[:, 1] = [False, True, True]
    table = _table(members, truth, held)
    table = table.take(np.asarray(table.holders() > 0))
    w = np.array([0.2, 0.5, 0.3])
    combined = table.combined(w)["probabilities"]
    for column, row in enumerate(table.rows):
        answered = held[:, row].tolist()
        expected = combine_outputs(
            [{"probabilities": m["probabilities"][row : row + 1]} for m in members], renormalized(w, answered)
        )["probabilities"][0]
        np.testing.assert_allclose(combined[column], expected, atol=1e-6)
    # Row 0 was held out by member 0 alone: its answer does not depend on the weights.
    np.testing.assert_allclose(
        table.combined([0.0, 1.0, 0.0])["probabilities"][0], members[0]["probabilities"][0]
    )


def test_only_rows_held_out_by_two_or_more_members_are_informative() -> None:
    members, truth = _members(rows=60)
    own_fold = np.zeros((3, 60), dtype=bool)
    for m in range(3):
        own_fold[m, m::3] = True  # each member its own fold: one holder per row
    table = _table(members, truth, own_fold)
    assert table.informative().size == 0
    assert (
        table.loss([1, 0, 0]) == pytest.approx(table.loss([0, 0, 1])) == pytest.approx(table.loss(uniform(3)))
    )
    shared = own_fold.copy()
    shared[1] |= own_fold[0]  # members 0 and 1 share fold 0
    table = _table(members, truth, shared)
    assert table.informative().size == 20
    assert table.components() == [[0, 1], [2]]


def test_member_losses_score_each_member_on_its_own_rows() -> None:
    members, truth = _members()
    table = _table(members, truth)
    losses = table.member_losses()
    assert losses[2] < losses[1] < losses[0]
    assert losses[2] == pytest.approx(table.loss([0, 0, 1]), rel=1e-6)


def test_optimized_weights_lie_on_the_simplex_and_beat_uniform() -> None:
    members, truth = _members()
    table = _table(members, truth)
    weights = optimized(table)
    assert weights.shape == (3,)
    assert np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[2] > weights[0]
    assert table.loss(weights) < table.loss(uniform(3))


def test_optimized_matches_a_brute_force_grid() -> None:
    members, truth = _members(1)
    table = _table(members, truth)
    weights = optimized(table)
    grid = [
        np.array([a, b, 1 - a - b])
        for a in np.linspace(0, 1, 21)
        for b in np.linspace(0, 1, 21)
        if a + b <= 1
    ]
    best = min(table.loss(w + 1e-15) for w in grid)
    assert table.loss(weights) <= best + 1e-3


def test_greedy_selection_prefers_the_best_member() -> None:
    members, truth = _members()
    weights = greedy(_table(members, truth), rounds=20)
    assert weights.sum() == pytest.approx(1.0)
    assert np.argmax(weights) == 2
    picks = weights / weights[weights > 0].min()
    assert np.allclose(picks, np.round(picks))  # weights are ratios of selection counts


def test_regression_objective_and_weights() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 1))
    near = {"predictions": truth + rng.normal(scale=0.1, size=truth.shape)}
    far = {"predictions": truth + rng.normal(scale=2.0, size=truth.shape)}
    table = _table([far, near], {"predictions": truth})
    weights = optimized(table)
    assert weights[1] > 0.9
    combined = combine_outputs([far, near], weights)["predictions"]
    assert np.mean((combined - truth) ** 2) < np.mean((near["predictions"] - truth) ** 2) + 1e-9
    assert table.loss([0, 1]) == pytest.approx(np.mean((near["predictions"] - truth) ** 2) / np.var(truth))


def test_balanced_keeps_ratios_inside_a_group_and_gives_groups_their_uniform_share() -> None:
    np.testing.assert_allclose(balanced([0.6, 0.0, 0.2, 0.2], [[0, 1], [2, 3]]), [0.5, 0.0, 0.25, 0.25])
    # A member no row compares (a group of its own) gets its uniform share, whatever it was given.
    np.testing.assert_allclose(balanced([0.9, 0.1, 0.0], [[0, 1], [2]]), [0.6, 2 / 30, 1 / 3])


def test_given_and_uniform() -> None:
    assert np.allclose(given([1, 3]), [0.25, 0.75])
    assert np.allclose(uniform(4), 0.25)
    with pytest.raises(ValueError, match="positive"):
        given([0, 0])


def test_shrinkage_pulls_learned_weights_toward_uniform() -> None:
    np.testing.assert_allclose(shrink([1.0, 0.0, 0.0], 0.3), [0.8, 0.1, 0.1])
    np.testing.assert_allclose(shrink([0.6, 0.4], 0.0), [0.6, 0.4])
    np.testing.assert_allclose(shrink([0.9, 0.1, 0.0, 0.0], 1.0), [0.25] * 4)
    np.testing.assert_allclose(shrink([0.8, 0.2, 0.0], 0.5, among=[True, True, False]), [0.65, 0.35, 0.0])
    with pytest.raises(ValueError, match="shrinkage"):
        shrink([0.5, 0.5], 1.5)


def test_shrinkage_is_validated_in_the_config() -> None:
    assert AssembleConfig(shrinkage=0.2).shrinkage == 0.2
    assert AssembleConfig().shrinkage == "auto"
    for bad in (-0.1, 1.5, "sometimes"):
        with pytest.raises(ValidationError):
            AssembleConfig(shrinkage=bad)
