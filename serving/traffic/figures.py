"""The comparison's figures as pure numpy: how one answer differs from another, and pooled sums.

* Output kind ``probabilities`` (classification): **agreement**, the fraction of argmax decisions
  (one per row of a ``[batch, classes]`` output; for a single column, the 0.5 threshold) that are
  the same on both sides, and the **mean absolute difference** of the probabilities per element.
* Output kind ``predictions`` (regression): the **mean absolute difference** per element and the
  **mean relative difference**, ``|y_new - y_ref| / max(|y_ref|, 1e-12)`` per element.

A :class:`Diff` holds the sums, so the figures of many requests pool their rows exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from registry.manifest import OutputKind
from serving.traffic.summary import Figures, Latency, OutputFigures

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

    def add(self, other: Diff) -> None:
        self.rows += other.rows
        self.decisions += other.decisions
        self.agreeing += other.agreeing
        self.elements += other.elements
        self.abs_sum += other.abs_sum
        self.rel_sum += other.rel_sum


def diff(kind: OutputKind, reference: np.ndarray, other: np.ndarray) -> Diff | None:
    """How ``other`` differs from ``reference`` (same shape, rows first); None if not comparable."""
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(other, dtype=np.float64)
    if ref.shape != new.shape or ref.ndim == 0:
        return None
    gap = np.abs(new - ref)
    result = Diff(rows=int(ref.shape[0]), elements=int(ref.size), abs_sum=float(gap.sum()))
    if kind == "probabilities":
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            same = np.argmax(ref, axis=-1) == np.argmax(new, axis=-1)
        else:  # one probability per row: the decision is the 0.5 threshold
            same = (ref >= 0.5) == (new >= 0.5)
        result.decisions = int(same.size)
        result.agreeing = int(np.count_nonzero(same))
    else:
        result.rel_sum = float((gap / np.maximum(np.abs(ref), REL_EPS)).sum())
    return result


def diff_outputs(
    kinds: Mapping[str, OutputKind], reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]
) -> dict[str, Diff]:
    """:func:`diff` of every output both answers have, by output name."""
    found: dict[str, Diff] = {}
    for name, kind in kinds.items():
        if name in reference and name in other:
            compared = diff(kind, reference[name], other[name])
            if compared is not None:
                found[name] = compared
    return found


def figures(total: Diff, kind: OutputKind) -> Figures:
    """The figures of pooled sums of one kind."""
    return Figures(
        rows=total.rows,
        agreement=total.agreeing / total.decisions if kind == "probabilities" and total.decisions else None,
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


def latency(values: Sequence[float]) -> Latency:
    """p50 and p99 of ``values`` (numpy's linear interpolation); nulls for none."""
    if not values:
        return Latency()
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return Latency(p50=float(p50), p99=float(p99))
