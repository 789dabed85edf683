"""The comparison's figures as pure numpy: how one answer differs from another, and pooled sums.

* Output kind ``probabilities`` (classification): **agreement**, the fraction of argmax decisions
  (one per row of a ``[batch, classes]`` output; for a single column, the 0.5 threshold) that are
  the same on both sides, and the **mean absolute difference** of the probabilities per element.
* Output kind ``multilabel``: the same two figures, with one 0.5-threshold decision per label of
  each row (pooled with neither classification nor regression; it has its own output figures).
* Output kind ``predictions`` (regression): the **mean absolute difference** per element and the
  **mean relative difference**, ``|y_new - y_ref| / max(|y_ref|, 1e-12)`` per element.

A :class:`Diff` holds the sums, so the figures of many requests pool their rows exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contracts.comparison import Figures, Latency, OutputFigures
from contracts.manifest import OutputKind

REL_EPS = 1e-12
"""Floor of the reference's magnitude in the relative difference: a zero prediction divides by this."""


@dataclass(slots=True)
class Diff:
    """Sums over compared rows: decisions and agreeing ones, elements and summed differences."""

    rows: int = 0
    decisions: int = 0
    agreeing: int = 0
    elements: int = 0
    abs_sum: float = 0.0
    rel_sum: float = 0.0

    def add(self, other: Diff, sign: int = 1) -> None:
        """Add ``other`` (``sign=-1``: take it away again, as the window does when it drops a request)."""
        self.rows += sign * other.rows
        self.decisions += sign * other.decisions
        self.agreeing += sign * other.agreeing
        self.elements += sign * other.elements
        self.abs_sum += sign * other.abs_sum
        self.rel_sum += sign * other.rel_sum


def diff_many(kind: OutputKind, reference: np.ndarray, others: Sequence[np.ndarray]) -> list[Diff | None]:
    """How each of ``others`` differs from ``reference``: None for one of another shape.

    All of them in one pass of numpy over the stacked answers: a request compares the
    challenger's answer and every member's with the champion's, so this runs per request.
    """
    ref = np.asarray(reference, dtype=np.float64)
    found: list[Diff | None] = [None] * len(others)
    usable = [i for i, other in enumerate(others) if np.shape(other) == ref.shape]
    if ref.ndim == 0 or not usable:
        return found
    stack = np.stack([np.asarray(others[i], dtype=np.float64) for i in usable])
    flat_gap = np.abs(stack - ref).reshape(len(usable), -1)
    abs_sums = flat_gap.sum(axis=1)
    agreeing: np.ndarray | None = None
    rel_sums: np.ndarray | None = None
    decisions = 0
    if kind != "predictions":
        if kind == "probabilities" and ref.ndim >= 2 and ref.shape[-1] > 1:
            same = np.argmax(stack, axis=-1) == np.argmax(ref, axis=-1)
        else:  # one probability per row, or per label (multilabel): the decision is the 0.5 threshold
            same = (stack >= 0.5) == (ref >= 0.5)
        decisions = int(same[0].size)
        agreeing = np.count_nonzero(same.reshape(len(usable), -1), axis=1)
    else:
        rel_sums = (flat_gap / np.maximum(np.abs(ref), REL_EPS).reshape(-1)).sum(axis=1)
    for k, i in enumerate(usable):
        found[i] = Diff(
            rows=int(ref.shape[0]),
            decisions=decisions,
            agreeing=int(agreeing[k]) if agreeing is not None else 0,
            elements=int(ref.size),
            abs_sum=float(abs_sums[k]),
            rel_sum=float(rel_sums[k]) if rel_sums is not None else 0.0,
        )
    return found


def diff(kind: OutputKind, reference: np.ndarray, other: np.ndarray) -> Diff | None:
    """How ``other`` differs from ``reference`` (same shape, rows first); None if not comparable."""
    return diff_many(kind, reference, [other])[0]


def diff_answers(
    kinds: Mapping[str, OutputKind],
    reference: Mapping[str, np.ndarray],
    answers: Sequence[Mapping[str, np.ndarray] | None],
) -> list[dict[str, Diff]]:
    """For each of ``answers``, :func:`diff` of every output it shares with ``reference``, by name
    (nothing for a missing answer)."""
    found: list[dict[str, Diff]] = [{} for _ in answers]
    for name, kind in kinds.items():
        if name not in reference:
            continue
        having = [
            (i, answer[name]) for i, answer in enumerate(answers) if answer is not None and name in answer
        ]
        compared = diff_many(kind, reference[name], [array for _, array in having])
        for (i, _), part in zip(having, compared, strict=True):
            if part is not None:
                found[i][name] = part
    return found


def figures(total: Diff, kind: OutputKind) -> Figures:
    """The figures of pooled sums of one kind."""
    return Figures(
        rows=total.rows,
        agreement=total.agreeing / total.decisions if kind != "predictions" and total.decisions else None,
        mean_abs_diff=total.abs_sum / total.elements if total.elements else None,
        mean_rel_diff=total.rel_sum / total.elements if kind == "predictions" and total.elements else None,
    )


def output_figures(totals: Mapping[str, Diff], kinds: Mapping[str, OutputKind]) -> dict[str, OutputFigures]:
    """The figures of each output, by name."""
    return {
        name: OutputFigures(kind=kinds[name], **figures(total, kinds[name]).model_dump())
        for name, total in sorted(totals.items())
    }


def pooled_figures(
    totals: Mapping[str, Diff], kinds: Mapping[str, OutputKind], kind: OutputKind
) -> Figures | None:
    """The figures of every output of ``kind`` taken together; None if there is none."""
    pool = Diff()
    found = False
    for name, total in totals.items():
        if kinds[name] == kind:
            pool.add(total)
            found = True
    return figures(pool, kind) if found else None


def latency(values: Iterable[float]) -> Latency:
    """p50 and p99 of ``values``, interpolated linearly between the closest ranks as numpy's
    ``percentile`` does by default; nulls for none.

    Sorted in plain Python: for the window's thousand values that is several times cheaper than
    numpy's percentile, and the summary computes one per side and per member on every scrape.
    """
    ordered = sorted(values)
    if not ordered:
        return Latency()
    return Latency(p50=_ranked(ordered, 0.50), p99=_ranked(ordered, 0.99))


def _ranked(ordered: Sequence[float], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
