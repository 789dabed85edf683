"""Member weights on the probability simplex: uniform, given, or learned on out-of-fold answers.

The learners (greedy selection and the SLSQP optimum) score a weighting by the loss of the
out-of-fold ensemble (:class:`training.oof.OutOfFold`), whose rows are combined over the members
that held them out, as the gateway renormalises over the members that answered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from contracts.combine import FloatArray, normalized
from training.oof import OutOfFold

# Weights below this after optimisation are noise from the solver: dropping them lets greedy and
# optimized agree on which members the data gives nothing.
PRUNE_BELOW = 1e-3


def uniform(count: int) -> FloatArray:
    return np.full(count, 1.0 / count)


def given(weights: Sequence[float] | FloatArray) -> FloatArray:
    return normalized(weights)


def shrink(
    weights: Sequence[float] | FloatArray,
    shrinkage: float,
    among: Sequence[bool] | npt.NDArray[np.bool_] | None = None,
) -> FloatArray:
    """``(1 - shrinkage) * weights + shrinkage * uniform``: learned weights pulled toward equal ones.

    ``among`` limits the uniform part to some members (the others keep weight 0).
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    w = normalized(weights)
    mask = np.ones(len(w), dtype=bool) if among is None else np.asarray(among, dtype=bool)
    even = mask / mask.sum()
    return normalized((1.0 - shrinkage) * w + shrinkage * even)


def greedy(table: OutOfFold, rounds: int = 100) -> FloatArray:
    """Ensemble selection with replacement (Caruana et al., 2004): weights are selection counts.

    Each round adds the member that lowers the out-of-fold loss most; the counts of the best
    round are the weights.
    """
    counts = np.zeros(table.members)
    best_score = np.inf
    best_counts = np.ones(table.members)
    for _ in range(rounds):
        scores = []
        for i in range(table.members):
            counts[i] += 1
            scores.append(table.loss(counts))
            counts[i] -= 1
        choice = int(np.argmin(scores))
        counts[choice] += 1
        if scores[choice] < best_score - 1e-12:
            best_score = scores[choice]
            best_counts = counts.copy()
    return normalized(best_counts)


def optimized(table: OutOfFold) -> FloatArray:
    """Weights minimising the out-of-fold loss over the simplex (SLSQP from the uniform start)."""
    from scipy.optimize import minimize

    count = table.members
    if count == 1:
        return np.ones(1)

    def objective(w: np.ndarray) -> float:
        return table.loss(np.clip(w, 0.0, None) + 1e-15)

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


def balanced(weights: Sequence[float] | FloatArray, components: Sequence[Sequence[int]]) -> FloatArray:
    """Each group of members scaled to its uniform share; the ratios inside a group are kept.

    Out-of-fold rows only compare members that held the same rows out, so how much one group
    weighs against another is not learned from them: it stays what uniform gives.
    """
    w = normalized(weights)
    out = np.zeros_like(w)
    for group in components:
        index = np.asarray(group, dtype=np.int64)
        share = len(index) / len(w)
        inner = w[index].sum()
        out[index] = share * (w[index] / inner if inner > 0 else np.full(len(index), 1.0 / len(index)))
    return normalized(out)
