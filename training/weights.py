"""Member weights on the probability simplex: uniform, given, optimised, or greedy selection.

Every candidate weighting is scored by combining the members with :mod:`serving.combine`, the
same code the gateway serves with, on the validation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.combine import combine_outputs, normalized

# Weights below this after optimisation are noise from the solver: drop them so the ensemble does
# not fan out to members that barely count.
PRUNE_BELOW = 1e-3


def validation_loss(
    member_outputs: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | np.ndarray,
    truth: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
) -> float:
    """The objective: NLL per classification output plus MSE / variance per regression output."""
    combined = combine_outputs(member_outputs, weights)
    total = 0.0
    for name, kind in kinds.items():
        pred = np.asarray(combined[name], dtype=np.float64)
        if kind == "probabilities":
            labels = np.asarray(truth[name], dtype=np.int64).reshape(-1)
            picked = pred[np.arange(len(labels)), labels]
            total += float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
        else:
            values = np.asarray(truth[name], dtype=np.float64).reshape(pred.shape)
            total += float(np.mean((pred - values) ** 2) / max(float(np.var(values)), 1e-12))
    return total


def uniform(count: int) -> np.ndarray:
    return np.full(count, 1.0 / count)


def given(weights: Sequence[float]) -> np.ndarray:
    return normalized(weights)


def shrink(weights: Sequence[float] | np.ndarray, shrinkage: float) -> np.ndarray:
    """``(1 - shrinkage) * weights + shrinkage * uniform``: learned weights pulled toward equal ones."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    w = normalized(weights)
    return normalized((1.0 - shrinkage) * w + shrinkage * uniform(len(w)))


def optimized(
    member_outputs: Sequence[Mapping[str, np.ndarray]],
    truth: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
) -> np.ndarray:
    """Weights minimising the validation loss over the simplex (SLSQP from the uniform start)."""
    from scipy.optimize import minimize

    count = len(member_outputs)
    if count == 1:
        return np.ones(1)
    # float64 answers: combining float32 ones rounds the objective to float32, and the solver's
    # finite-difference gradient would then see a flat surface and stop at the start.
    member_outputs = [{k: np.asarray(v, dtype=np.float64) for k, v in m.items()} for m in member_outputs]

    def objective(w: np.ndarray) -> float:
        return validation_loss(member_outputs, np.clip(w, 0.0, None) + 1e-15, truth, kinds)

    start = uniform(count)
    result = minimize(
        objective,
        start,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)}],
        options={"maxiter": 200, "ftol": 1e-10},
    )
    weights = np.clip(np.asarray(result.x, dtype=np.float64), 0.0, None)
    weights[weights < PRUNE_BELOW] = 0.0
    if weights.sum() <= 0 or objective(normalized(weights)) > objective(start):
        return start
    return normalized(weights)


def greedy(
    member_outputs: Sequence[Mapping[str, np.ndarray]],
    truth: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    rounds: int = 50,
) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al., 2004): weights are selection counts."""
    count = len(member_outputs)
    counts = np.zeros(count)
    best_score = np.inf
    best_counts = counts.copy()
    for _ in range(rounds):
        scores = []
        for i in range(count):
            trial = counts.copy()
            trial[i] += 1
            scores.append(validation_loss(member_outputs, trial, truth, kinds))
        choice = int(np.argmin(scores))
        counts[choice] += 1
        if scores[choice] < best_score - 1e-12:
            best_score = scores[choice]
            best_counts = counts.copy()
    return normalized(best_counts)
