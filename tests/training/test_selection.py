"""Which members are served and with which weights: the kept-or-dropped rules and their reasons."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.config import TrainConfig
from training.errors import TrainingError
from training.oof import OutOfFold
from training.selection import MIN_INFORMATIVE_ROWS, MIN_SHRINKAGE, clearly_better, decide


def _config(members: int = 3, **assemble: Any) -> TrainConfig:
    return TrainConfig.model_validate({"members": {"count": members}, "assemble": assemble})


def _answers(rows: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Per member (rows, 4) probabilities: random, mildly right, sharp and right; and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, rows)
    onehot = np.eye(4)[labels]
    noise = rng.dirichlet(np.ones(4), rows)
    fair = 0.5 * onehot + 0.5 * rng.dirichlet(np.ones(4), rows)
    good = 0.85 * onehot + 0.15 / 4
    return [noise, fair, good], labels


def _table(answers: list[np.ndarray], labels: np.ndarray, held: np.ndarray) -> OutOfFold:
    member_rows = [np.flatnonzero(h).astype(np.int64) for h in held]
    return OutOfFold.build(
        member_rows,
        [{"probabilities": a[r]} for a, r in zip(answers, member_rows, strict=True)],
        lambda r: {"probabilities": labels[r]},
        {"probabilities": "probabilities"},
    )


def _own_folds(members: int, rows: int) -> np.ndarray:
    held = np.zeros((members, rows), dtype=bool)
    for m in range(members):
        held[m, m::members] = True
    return held


def test_each_member_its_own_fold_gives_uniform_and_says_why() -> None:
    answers, labels = _answers(600)
    decision = decide(_config(), _table(answers, labels, _own_folds(3, 600)))
    assert decision.served == "uniform"
    np.testing.assert_allclose(decision.weights, [1 / 3] * 3)
    assert decision.informative_rows == 0
    assert decision.oof_rows == 600
    assert decision.learned is None
    assert not decision.dropped
    assert "held out by one member only (3 folds for 3 members)" in decision.note
    assert "\n" not in decision.note


def test_a_learned_weighting_that_beats_uniform_out_of_fold_is_served_with_every_member() -> None:
    answers, labels = _answers(600)
    decision = decide(_config(), _table(answers, labels, np.ones((3, 600), dtype=bool)))
    assert decision.served == "learned"
    assert decision.informative_rows == 600
    assert decision.oof_loss_learned is not None
    assert decision.oof_loss_uniform is not None
    assert decision.oof_loss_learned < decision.oof_loss_uniform
    assert decision.weights.sum() == pytest.approx(1.0)
    assert np.argmax(decision.weights) == 2
    # every member served, the worst with at least 5% of a uniform share
    assert decision.weights.min() >= MIN_SHRINKAGE / 3 - 1e-12
    assert not decision.dropped
    assert decision.note.startswith("greedy weights, shrinkage ")
    assert "vs" in decision.note
    assert "600 rows held out by two or more members" in decision.note


def test_optimized_goes_through_the_same_out_of_fold_check() -> None:
    answers, labels = _answers(600)
    decision = decide(_config(weights="optimized"), _table(answers, labels, np.ones((3, 600), dtype=bool)))
    assert decision.served == "learned"
    assert decision.note.startswith("optimized weights")
    assert decision.weights.min() > 0


def test_a_weighting_that_does_not_beat_uniform_out_of_fold_is_not_served() -> None:
    answers, labels = _answers(600)
    same = [answers[2]] * 3  # three identical members: no weighting can do better than uniform
    decision = decide(_config(), _table(same, labels, np.ones((3, 600), dtype=bool)))
    assert decision.served == "uniform"
    np.testing.assert_allclose(decision.weights, [1 / 3] * 3)
    assert decision.learned is not None  # the report still shows what was learned
    assert decision.note.startswith("uniform: greedy weights did not beat uniform out of fold")


def test_a_gain_within_the_noise_of_the_rows_is_not_clearly_better() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.exponential(0.3, 400)
    noisy = baseline + rng.normal(-0.005, 0.3, 400)  # better on average, by far less than the noise
    assert noisy.mean() < baseline.mean()
    assert not clearly_better(noisy, baseline)
    assert clearly_better(baseline - 0.05 + rng.normal(0, 0.01, 400), baseline)
    assert not clearly_better(baseline, baseline)  # equal is never better
    assert not clearly_better(baseline[:1] - 1, baseline[:1])  # one row says nothing


def test_too_few_informative_rows_give_uniform() -> None:
    answers, labels = _answers(600)
    held = _own_folds(3, 600)
    held[1, : 3 * (MIN_INFORMATIVE_ROWS - 1) : 3] = True  # member 1 also holds some of member 0's rows
    table = _table(answers, labels, held)
    assert table.informative().size == MIN_INFORMATIVE_ROWS - 1
    decision = decide(_config(), table)
    assert decision.served == "uniform"
    assert f"only {MIN_INFORMATIVE_ROWS - 1} rows were held out by two or more members" in decision.note


def test_members_that_share_no_rows_keep_their_uniform_share() -> None:
    """Folds shared by members 0 and 1 only: member 2's weight against theirs is not learned."""
    answers, labels = _answers(900)
    held = np.zeros((3, 900), dtype=bool)
    held[0, :450] = held[1, :450] = True
    held[2, 450:] = True
    decision = decide(_config(), _table(answers, labels, held))
    assert decision.served == "learned"
    assert decision.weights[2] == pytest.approx(1 / 3)
    assert decision.weights[1] > decision.weights[0]


def test_prune_drops_the_members_selection_never_picked_and_says_why() -> None:
    answers, labels = _answers(600)
    table = _table(answers, labels, np.ones((3, 600), dtype=bool))
    decision = decide(_config(prune=True, shrinkage=0.0), table)
    assert decision.served == "learned"
    np.testing.assert_allclose(decision.weights, [0.0, 0.0, 1.0])  # the sharp member alone is picked
    reason = "no weight in greedy selection (assemble.prune: true)"
    assert decision.dropped == {0: reason, 1: reason}
    # min_members brings back the best of the rest by out-of-fold loss, at a small weight
    two = decide(_config(prune=True, shrinkage=0.0, min_members=2), table)
    assert two.dropped == {0: reason}
    assert 0 < two.weights[1] < two.weights[2]
    assert two.weights.sum() == pytest.approx(1.0)


def test_a_search_keeps_its_best_candidates_by_out_of_fold_loss() -> None:
    answers, labels = _answers(600)
    config = TrainConfig.model_validate(
        {
            "search": {"trials": 3, "keep": 2, "space": {"model.width": {"choices": [8, 16]}}},
            "assemble": {"weights": "uniform"},
        }
    )
    decision = decide(config, _table(answers, labels, np.ones((3, 600), dtype=bool)))
    assert decision.eligible == [1, 2]
    np.testing.assert_allclose(decision.weights, [0.0, 0.5, 0.5])
    assert decision.dropped[0].startswith("not kept by the search: rank 3 of 3 by out-of-fold loss")
    assert decision.dropped[0].endswith("search.keep is 2")


def test_a_given_weight_of_zero_drops_the_member() -> None:
    answers, labels = _answers(60)
    decision = decide(
        _config(weights="given", given=[0.0, 1.0, 3.0]), _table(answers, labels, _own_folds(3, 60))
    )
    assert decision.served == "given"
    np.testing.assert_allclose(decision.weights, [0.0, 0.25, 0.75])
    assert decision.dropped == {0: "assemble.given gives it weight 0"}


def test_given_weights_that_leave_the_search_too_few_members_are_an_error() -> None:
    answers, labels = _answers(60)
    config = TrainConfig.model_validate(
        {
            "search": {"trials": 3, "keep": 2, "space": {"model.width": {"choices": [8, 16]}}},
            "assemble": {"weights": "given", "given": [5, 0, 1], "min_members": 2},
        }
    )
    with pytest.raises(TrainingError, match=r"gives 1 of the members the search kept a weight, fewer than"):
        decide(config, _table(answers, labels, np.ones((3, 60), dtype=bool)))
