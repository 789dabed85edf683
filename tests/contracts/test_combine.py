"""Combining member answers: the shared functions training evaluates with and the gateway serves with."""

from __future__ import annotations

import numpy as np
import pytest

from contracts import combine


def test_weighted_mean_matches_manual_sum_and_keeps_dtype() -> None:
    rng = np.random.default_rng(0)
    stack = rng.random((3, 4, 5)).astype(np.float32)
    weights = [0.2, 0.5, 0.3]
    out = combine.weighted_mean(stack, weights)
    expected = 0.2 * stack[0].astype(np.float64) + 0.5 * stack[1] + 0.3 * stack[2]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_weights_are_normalised() -> None:
    stack = np.array([[1.0], [3.0]])
    np.testing.assert_allclose(combine.weighted_mean(stack, [2, 2]), [2.0])
    np.testing.assert_allclose(combine.weighted_mean(stack, [1, 3]), [2.5])


def test_probabilities_stay_on_the_simplex() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 10, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    out = combine.weighted_mean(probs, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)


def test_mean_method_ignores_given_weights() -> None:
    np.testing.assert_allclose(combine.method_weights("mean", [0.9, 0.1]), [0.5, 0.5])
    np.testing.assert_allclose(combine.method_weights("weighted_mean", [3, 1]), [0.75, 0.25])
    with pytest.raises(ValueError, match="unknown combine method"):
        combine.method_weights("median", [1.0])


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [-1.0, 2.0], [np.nan, 1.0]])
def test_bad_weights_are_rejected(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        combine.normalized(weights)


def test_renormalised_over_answering_members() -> None:
    w = combine.renormalized([0.5, 0.3, 0.2], [True, False, True])
    np.testing.assert_allclose(w, [0.5 / 0.7, 0.0, 0.2 / 0.7])


def test_quorum_by_count_and_by_weight() -> None:
    weights = [0.6, 0.2, 0.2]
    assert combine.quorum_holds(weights, [True, False, False], min_members=1, min_weight=0.5)
    assert not combine.quorum_holds(weights, [True, False, False], min_members=2, min_weight=0.0)
    assert not combine.quorum_holds(weights, [False, True, True], min_members=2, min_weight=0.5)
    assert combine.quorum_holds(weights, [True, True, True], min_members=3, min_weight=1.0)


def test_combine_outputs_combines_each_output_on_its_own() -> None:
    a = {"probabilities": np.array([[0.2, 0.8]], np.float32), "predictions": np.array([[1.0]], np.float32)}
    b = {"probabilities": np.array([[0.6, 0.4]], np.float32), "predictions": np.array([[3.0]], np.float32)}
    out = combine.combine_outputs([a, b], [0.25, 0.75])
    np.testing.assert_allclose(out["probabilities"], [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(out["predictions"], [[2.5]], rtol=1e-6)


def test_spread_is_zero_when_members_agree_and_grows_with_disagreement() -> None:
    same = np.ones((3, 2, 2), np.float32)
    assert combine.combine([{"p": member} for member in same], [1, 1, 1]).disagreement == 0.0
    apart = np.stack([np.zeros((2, 2)), np.ones((2, 2))]).astype(np.float32)
    np.testing.assert_allclose(combine.weighted_spread(apart, [1, 1]), np.full((2, 2), 0.5))


def test_one_combine_answers_the_mean_the_spread_and_the_disagreement() -> None:
    rng = np.random.default_rng(3)
    members = [
        {
            "probabilities": rng.random((4, 3)).astype(np.float32),
            "score": rng.random((4, 1)).astype(np.float32),
        }
        for _ in range(3)
    ]
    weights = [0.5, 0.3, 0.2]
    plain = combine.combine(members, weights)
    assert plain.spread == {}
    for name in ("probabilities", "score"):
        np.testing.assert_array_equal(plain.outputs[name], combine.combine_outputs(members, weights)[name])
    first = combine.weighted_spread(np.stack([m["probabilities"] for m in members]), weights)
    assert plain.disagreement == float(np.mean(first))

    detailed = combine.combine(members, weights, spread=True)
    assert detailed.disagreement == plain.disagreement
    for name in ("probabilities", "score"):
        np.testing.assert_array_equal(detailed.outputs[name], plain.outputs[name])
        stack = np.stack([m[name] for m in members])
        np.testing.assert_array_equal(detailed.spread[name], combine.weighted_spread(stack, weights))
    # One member cannot disagree with anyone.
    assert combine.combine(members[:1], [1.0], spread=True).disagreement is None


def test_member_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="member answers"):
        combine.weighted_mean(np.zeros((2, 3)), [1.0, 1.0, 1.0])


def _answers(members: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "probabilities": rng.dirichlet(np.ones(4), size=6).astype(np.float32),
            "predictions": rng.normal(size=(6, 2)).astype(np.float32),
            "count": rng.integers(0, 9, size=(6,)),
        }
        for _ in range(members)
    ]


@pytest.mark.parametrize("members", [2, 3, 5])
def test_combine_is_bit_identical_to_the_separate_computations(members: int) -> None:
    answers = _answers(members, seed=members)
    weights = combine.renormalized(np.linspace(1.0, 2.0, members), [True] * members)
    combined = combine.combine(answers, weights, spread=True)
    separate = combine.combine_outputs(answers, weights)
    assert list(combined.outputs) == list(separate) == ["probabilities", "predictions", "count"]
    for name, array in separate.items():
        assert combined.outputs[name].dtype == array.dtype
        assert combined.outputs[name].tobytes() == array.tobytes()
        alone = combine.weighted_spread(np.stack([a[name] for a in answers]), weights)
        assert combined.spread[name].dtype == alone.dtype
        assert combined.spread[name].tobytes() == alone.tobytes()
    first = combine.weighted_spread(np.stack([a["probabilities"] for a in answers]), weights)
    assert combined.disagreement == float(np.mean(first))
    assert combined.disagreement > 0.0


def test_combine_leaves_the_spread_out_unless_asked() -> None:
    answers = _answers(3, seed=7)
    plain = combine.combine(answers, [1, 1, 1])
    assert plain.spread == {}
    assert plain.disagreement == combine.combine(answers, [1, 1, 1], spread=True).disagreement


def test_one_member_has_no_disagreement_and_zero_spread() -> None:
    combined = combine.combine(_answers(1, seed=3), [1.0], spread=True)
    assert combined.disagreement is None
    assert all(not spread.any() for spread in combined.spread.values())


def test_an_empty_first_output_disagrees_by_zero() -> None:
    answers = [{"empty": np.zeros((0, 3), np.float32)}, {"empty": np.zeros((0, 3), np.float32)}]
    assert combine.combine(answers, [1, 1]).disagreement == 0.0


def test_multilabel_answers_average_per_label_and_disagree_by_decisions() -> None:
    """Two members, weights 3:1, two rows of three labels, worked by hand."""
    first = np.array([[0.9, 0.2, 0.6], [0.1, 0.8, 0.4]], dtype=np.float32)
    second = np.array([[0.1, 0.4, 0.2], [0.3, 0.2, 0.9]], dtype=np.float32)
    combined = combine.combine(
        [{"tags": first}, {"tags": second}], [3, 1], spread=True, kinds={"tags": "multilabel"}
    )
    # 0.75 * first + 0.25 * second, label by label
    expected = np.array([[0.7, 0.25, 0.5], [0.15, 0.65, 0.525]])
    np.testing.assert_allclose(combined.outputs["tags"], expected, rtol=1e-6)
    assert combined.outputs["tags"].dtype == np.float32
    # The spread is per label: sqrt(w1 w2) |a - b| for two members.
    np.testing.assert_allclose(
        combined.spread["tags"], np.sqrt(0.75 * 0.25) * np.abs(first - second), rtol=1e-5
    )
    # Ensemble decisions at 0.5: [1, 0, 1], [0, 1, 1]. The first member decides [1, 0, 1], [0, 1, 0]:
    # 1 of 6 differs. The second decides [0, 0, 0], [0, 0, 1]: 3 of 6 differ. 0.75/6 + 0.25 * 3/6.
    assert combined.disagreement == pytest.approx(0.75 * 1 / 6 + 0.25 * 3 / 6)
    # Without the kind the same answers disagree by their spread, as every other output does.
    plain = combine.combine([{"tags": first}, {"tags": second}], [3, 1])
    assert plain.disagreement == pytest.approx(float(np.mean(np.sqrt(0.75 * 0.25) * np.abs(first - second))))


def test_multilabel_disagreement_is_zero_when_every_decision_agrees() -> None:
    answers = [{"tags": np.array([[0.9, 0.1]])}, {"tags": np.array([[0.6, 0.4]])}]
    assert combine.combine(answers, [1, 1], kinds={"tags": "multilabel"}).disagreement == 0.0
    assert combine.combine(answers[:1], [1], kinds={"tags": "multilabel"}).disagreement is None
