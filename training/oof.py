"""Out-of-fold predictions: every member's answers on the rows it never trained on, side by side.

A row's out-of-fold ensemble answer combines only the members that held the row out, their
weights renormalised over them, as the gateway renormalises over the members that answered
(:func:`contracts.combine.renormalized`). A row held out by one member alone gets that member's
answer whatever the weights, so only rows held out by two or more members can tell weightings
apart (:meth:`OutOfFold.informative`), and only about the members that share such rows
(:meth:`OutOfFold.components`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import reduce

import numpy as np
import numpy.typing as npt

from contracts.combine import FloatArray
from training.metrics import PROBABILITY_FLOOR, binary_cross_entropy

Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class OutOfFold:
    """Members' answers on the union of their held-out rows; ``held`` says who held out which row."""

    rows: Rows
    """Dataset row indices, sorted."""
    held: npt.NDArray[np.bool_]
    """(members, rows): the member never trained on the row."""
    answers: dict[str, FloatArray]
    """Per output: (members, rows, width) answers, 0 where the member trained on the row."""
    truth: dict[str, np.ndarray]
    """Per output: class indices (rows,), 0/1 labels (rows, labels) or values (rows, 1)."""
    kinds: dict[str, str]
    """Per output: 'probabilities', 'multilabel' or 'predictions'."""
    scales: dict[str, float]
    """Per regression output: the target's variance over every row of the table (the loss divides by it)."""

    @classmethod
    def build(
        cls,
        member_rows: Sequence[Rows],
        member_answers: Sequence[Mapping[str, np.ndarray]],
        labels: Callable[[Rows], dict[str, np.ndarray]],
        kinds: Mapping[str, str],
    ) -> OutOfFold:
        """Align each member's (rows, answers) on the union of the rows; ``labels`` gives the truth."""
        rows = reduce(np.union1d, member_rows, np.zeros(0, dtype=np.int64)).astype(np.int64)
        held = np.zeros((len(member_rows), len(rows)), dtype=bool)
        answers: dict[str, FloatArray] = {}
        for m, (own_rows, own) in enumerate(zip(member_rows, member_answers, strict=True)):
            where = np.searchsorted(rows, own_rows)
            held[m, where] = True
            for name in kinds:
                values = np.asarray(own[name], dtype=np.float64).reshape(len(own_rows), -1)
                if name not in answers:
                    answers[name] = np.zeros((len(member_rows), len(rows), values.shape[1]))
                answers[name][m, where] = values
        truth = labels(rows)
        scales = {
            name: max(float(np.var(np.asarray(truth[name], dtype=np.float64))), 1e-12)
            for name, kind in kinds.items()
            if kind == "predictions"
        }
        return cls(rows, held, answers, truth, dict(kinds), scales)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def members(self) -> int:
        return int(self.held.shape[0])

    def holders(self) -> npt.NDArray[np.int64]:
        """How many members held out each row."""
        return np.asarray(self.held.sum(axis=0), dtype=np.int64)

    def take(self, columns: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> OutOfFold:
        """The same table on a subset of its rows (the regression scales stay those of the whole)."""
        return replace(
            self,
            rows=self.rows[columns],
            held=self.held[:, columns],
            answers={k: v[:, columns] for k, v in self.answers.items()},
            truth={k: np.asarray(v)[columns] for k, v in self.truth.items()},
        )

    def informative(self) -> OutOfFold:
        """The rows held out by two or more members: the only ones whose loss depends on the weights."""
        return self.take(np.asarray(self.holders() >= 2))

    def of_members(self, members: Sequence[int]) -> OutOfFold:
        """The table of some members only, on the rows at least one of them held out."""
        index = np.asarray(members, dtype=np.int64)
        narrowed = replace(
            self, held=self.held[index], answers={k: v[index] for k, v in self.answers.items()}
        )
        return narrowed.take(np.asarray(narrowed.held.any(axis=0)))

    def row_weights(self, weights: Sequence[float] | FloatArray) -> FloatArray:
        """(members, rows): the weights renormalised over each row's holders.

        A row whose holders all have weight 0 takes their plain mean, the limit of giving every
        member a vanishing weight; selection starts from such rows.
        """
        w = np.asarray(weights, dtype=np.float64)[:, None] * self.held
        totals = w.sum(axis=0)
        unweighted = totals <= 0
        if unweighted.any():
            w[:, unweighted] = self.held[:, unweighted]
            totals[unweighted] = self.held[:, unweighted].sum(axis=0)
        return w / np.where(totals > 0, totals, 1.0)

    def combined(self, weights: Sequence[float] | FloatArray) -> dict[str, FloatArray]:
        """The out-of-fold ensemble answer of every row."""
        w = self.row_weights(weights)
        return {name: np.einsum("mr,mrk->rk", w, values) for name, values in self.answers.items()}

    def row_losses(self, weights: Sequence[float] | FloatArray) -> FloatArray:
        """Per row: NLL per classification output, binary cross-entropy averaged over the labels per
        multi-label output, and squared error / variance per regression output."""
        return self._losses(self.combined(weights))

    def loss(self, weights: Sequence[float] | FloatArray) -> float:
        """The mean of :meth:`row_losses`: the objective every weighting is scored by."""
        return float(np.mean(self.row_losses(weights))) if self.size else float("nan")

    def member_losses(self) -> FloatArray:
        """Each member alone on the rows it held out (a search ranks its candidates by this)."""
        out = np.full(self.members, np.inf)
        for m in range(self.members):
            own = self.held[m]
            if own.any():
                part = self.take(own)
                values = self._losses({k: v[m] for k, v in part.answers.items()}, part.truth)
                out[m] = float(np.mean(values)) if np.all(np.isfinite(values)) else np.inf
        return out

    def components(self) -> list[list[int]]:
        """Groups of members linked by rows they held out together (a member alone is its own group).

        The loss only depends on weight ratios inside a group: how much the ensemble gives one
        group against another is left undetermined by these rows.
        """
        held = self.held.astype(np.int64)
        linked = (held @ held.T) > 0
        groups: list[list[int]] = []
        seen: set[int] = set()
        for start in range(self.members):
            if start in seen:
                continue
            group, frontier = [], [start]
            seen.add(start)
            while frontier:
                member = frontier.pop()
                group.append(member)
                for other in np.flatnonzero(linked[member]).tolist():
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
            groups.append(sorted(group))
        return groups

    def _losses(
        self, combined: Mapping[str, FloatArray], truth: Mapping[str, np.ndarray] | None = None
    ) -> FloatArray:
        truth = self.truth if truth is None else truth
        total = np.zeros(len(next(iter(truth.values()))))
        for name, kind in self.kinds.items():
            pred = combined[name]
            if kind == "probabilities":
                labels = np.asarray(truth[name], dtype=np.int64).reshape(-1)
                picked = pred[np.arange(len(labels)), labels]
                total += -np.log(np.clip(picked, PROBABILITY_FLOOR, 1.0))
            elif kind == "multilabel":
                total += binary_cross_entropy(pred, np.asarray(truth[name], dtype=np.float64))
            else:
                values = np.asarray(truth[name], dtype=np.float64).reshape(pred.shape)
                total += np.sum((pred - values) ** 2, axis=1) / self.scales[name]
        return total
