"""Combining member answers: pure numpy, shared by training's evaluation and the gateway.

Training evaluates the ensemble with exactly these functions and the gateway serves with them, so
offline numbers and online answers agree to float tolerance. Sums run in float64 and the result
takes the members' dtype. :func:`combine_answers` is the one call the gateway makes: the combined
outputs together with the members' disagreement and, when asked, each output's spread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def method_weights(method: str, weights: Sequence[float]) -> FloatArray:
    """The weights a combine method uses: the manifest's for ``weighted_mean``, equal for ``mean``."""
    if method == "mean":
        return np.full(len(weights), 1.0 / len(weights))
    if method == "weighted_mean":
        return normalized(weights)
    raise ValueError(f"unknown combine method {method!r}")


def normalized(weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weights scaled to sum to 1. Raises if none is positive."""
    w = np.asarray(weights, dtype=np.float64)
    # Two reductions check everything: with no negative weight, a finite sum means finite weights.
    total = float(w.sum()) if w.ndim == 1 else math.nan
    if not math.isfinite(total) or (w.size and float(w.min()) < 0):
        raise ValueError("weights must be a 1-D array of finite non-negative numbers")
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    return w / total


def renormalized(weights: Sequence[float] | FloatArray, answered: Sequence[bool]) -> FloatArray:
    """Weights over the members that answered, scaled to sum to 1; the others get 0."""
    w = np.asarray(weights, dtype=np.float64) * np.asarray(answered, dtype=bool)
    return normalized(w)


def quorum_holds(
    weights: Sequence[float] | FloatArray,
    answered: Sequence[bool],
    *,
    min_members: int,
    min_weight: float,
) -> bool:
    """True when enough members, carrying enough of the (normalised) weight, answered."""
    mask = np.asarray(answered, dtype=bool)
    if int(mask.sum()) < max(min_members, 1):
        return False
    answered_weight = float(normalized(weights)[mask].sum())
    return answered_weight + 1e-12 >= min_weight


def weighted_mean(stack: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weighted mean over axis 0 of ``stack`` (members first), in float64, cast back to its dtype."""
    w = normalized(weights)
    arr = _checked(stack, w)
    return np.asarray(_contract(w, arr), dtype=_out_dtype(arr))


def weighted_spread(stack: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weighted standard deviation across members, element-wise: the disagreement signal."""
    w = normalized(weights)
    arr = _checked(stack, w)
    arr64 = arr.astype(np.float64, copy=False)
    return _spread(w, arr64, _contract(w, arr64), _out_dtype(arr))


def _checked(stack: npt.NDArray[np.generic], w: FloatArray) -> npt.NDArray[np.generic]:
    """``stack`` as an array, with one member answer per weight."""
    arr = np.asarray(stack)
    if arr.shape[0] != w.shape[0]:
        raise ValueError(f"{arr.shape[0]} member answers for {w.shape[0]} weights")
    return arr


def _out_dtype(arr: npt.NDArray[np.generic]) -> np.dtype[np.generic]:
    """Floating answers keep their dtype; any other is combined into float64."""
    return arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)


def _spread(w: FloatArray, arr: FloatArray, mean: FloatArray, dtype: np.dtype[np.generic]) -> FloatArray:
    """The weighted standard deviation of ``arr`` (float64) around its weighted ``mean``."""
    return np.asarray(np.sqrt(_contract(w, (arr - mean) ** 2)), dtype=dtype)


def _contract(w: FloatArray, arr: npt.NDArray[np.generic]) -> FloatArray:
    """``sum_i w[i] * arr[i]`` in float64: ``np.tensordot(w, arr, axes=(0, 0))`` without its
    per-call overhead.

    The same reshape and ``dot`` tensordot performs, so the result is identical to the last bit.
    """
    arr = arr.astype(np.float64, copy=False)
    return np.asarray(np.dot(w, arr.reshape(arr.shape[0], -1)).reshape(arr.shape[1:]), dtype=np.float64)


def combine_outputs(
    member_outputs: Sequence[Mapping[str, npt.NDArray[np.generic]]],
    weights: Sequence[float] | FloatArray,
) -> dict[str, FloatArray]:
    """Combine each named output on its own across members (all members must share the outputs)."""
    return {name: weighted_mean(stack, weights) for name, stack in _stacks(member_outputs)}


@dataclass(frozen=True, slots=True)
class Combined:
    """An ensemble answer and how much its members disagreed on it."""

    outputs: dict[str, FloatArray]
    """Each output's weighted mean across members."""
    spread: dict[str, FloatArray]
    """Each output's weighted spread across members, when asked for; else empty."""
    disagreement: float | None
    """One number per answer, from the first output: its spread averaged over its elements, or for a
    multi-label output the fraction of label decisions where members and ensemble differ
    (:func:`decision_disagreement`). None from a single member, which cannot disagree with anyone."""


def decision_disagreement(
    stack: npt.NDArray[np.generic], ensemble: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray
) -> float:
    """Multi-label disagreement: the fraction of (row, label) decisions at the 0.5 threshold where a
    member decides otherwise than the ensemble, averaged over the members with their weights.

    0 when every member agrees with the ensemble on every label; 1 when all of them contradict it
    everywhere (which a weighted mean cannot produce; 0.5 is about the most that can happen).
    """
    return _decision_disagreement(stack, ensemble, normalized(weights))


def _decision_disagreement(
    stack: npt.NDArray[np.generic], ensemble: npt.NDArray[np.generic], w: FloatArray
) -> float:
    members = np.asarray(stack, dtype=np.float64) >= 0.5
    if members.size == 0:
        return 0.0
    differs = members != (np.asarray(ensemble, dtype=np.float64) >= 0.5)
    per_member = differs.reshape(differs.shape[0], -1).mean(axis=1)
    return float(np.dot(w, per_member))


def combine(
    member_outputs: Sequence[Mapping[str, npt.NDArray[np.generic]]],
    weights: Sequence[float] | FloatArray,
    *,
    spread: bool = False,
    kinds: Mapping[str, str] | None = None,
) -> Combined:
    """:func:`combine_outputs`, with the disagreement and (with ``spread``) every output's spread.

    ``kinds`` gives outputs' manifest kinds; a first output of kind ``multilabel`` measures the
    disagreement by decisions instead of spread. The weights are normalised once, and each output's
    members are stacked, converted to float64 and averaged once: the spread reuses that mean.
    """
    w = normalized(weights)
    outputs: dict[str, FloatArray] = {}
    spreads: dict[str, FloatArray] = {}
    disagreement: float | None = None
    for i, (name, stack) in enumerate(_stacks(member_outputs)):
        arr = _checked(stack, w)
        dtype = _out_dtype(arr)
        arr64 = arr.astype(np.float64, copy=False)
        mean = _contract(w, arr64)
        outputs[name] = np.asarray(mean, dtype=dtype)
        first_disagrees = i == 0 and len(member_outputs) > 1
        by_decision = first_disagrees and (kinds or {}).get(name) == "multilabel"
        if spread or (first_disagrees and not by_decision):
            output_spread = _spread(w, arr64, mean, dtype)
            if spread:
                spreads[name] = output_spread
        if by_decision:
            disagreement = _decision_disagreement(stack, outputs[name], w)
        elif first_disagrees:
            disagreement = float(np.mean(output_spread)) if output_spread.size else 0.0
    return Combined(outputs, spreads, disagreement)


def _stacks(
    member_outputs: Sequence[Mapping[str, npt.NDArray[np.generic]]],
) -> Iterator[tuple[str, npt.NDArray[np.generic]]]:
    """Each output's name and its members' answers stacked (members first), in the first's order."""
    if not member_outputs:
        raise ValueError("no member answers to combine")
    for name in member_outputs[0]:
        yield name, np.stack([np.asarray(out[name]) for out in member_outputs])
