"""Combining member answers: pure numpy, shared by training's evaluation and the gateway.

Training evaluates the ensemble with exactly these functions and the gateway serves with them, so
offline numbers and online answers agree to float tolerance. Sums run in float64 and the result
takes the members' dtype.

The weight functions run once or more per gateway request on a handful of weights, where numpy's
per-call overhead is most of the cost; for short 1-D weights they work on Python floats, summing in
the order numpy does, so their results are the same to the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]

# numpy sums up to this many elements with the unrolled loop that _numpy_sum mirrors.
_SMALL = 128


def _small_floats(weights: Sequence[float] | FloatArray) -> list[float] | None:
    """Short 1-D weights as Python floats, or None where numpy's own path must decide."""
    try:
        if isinstance(weights, np.ndarray):
            if weights.ndim != 1 or weights.shape[0] > _SMALL or weights.dtype.kind not in "fiub":
                return None
            return [float(v) for v in weights.tolist()]
        if isinstance(weights, (list, tuple)) and len(weights) <= _SMALL:
            return [float(v) for v in weights]
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _numpy_sum(values: list[float]) -> float:
    """The sum numpy's float64 add-reduce computes for up to ``_SMALL`` values, in its order."""
    n = len(values)
    if n < 8:
        total = 0.0
        for v in values:
            total += v
        return total
    r = values[:8]
    end = n - n % 8
    for i in range(8, end, 8):
        for j in range(8):
            r[j] += values[i + j]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(end, n):
        total += values[i]
    return total


def _small_flags(answered: Sequence[bool], n: int) -> list[bool] | None:
    """Python bool flags of length ``n`` as they are, or None where numpy's own path must decide."""
    if isinstance(answered, (list, tuple)) and len(answered) == n and all(type(a) is bool for a in answered):
        return list(answered)
    return None


def _normalized_floats(values: list[float]) -> list[float]:
    for v in values:
        if not (v >= 0.0 and math.isfinite(v)):
            raise ValueError("weights must be a 1-D array of finite non-negative numbers")
    total = _numpy_sum(values)
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    return [v / total for v in values]


def method_weights(method: str, weights: Sequence[float]) -> FloatArray:
    """The weights a combine method uses: the manifest's for ``weighted_mean``, equal for ``mean``."""
    if method == "mean":
        return np.full(len(weights), 1.0 / len(weights))
    if method == "weighted_mean":
        return normalized(weights)
    raise ValueError(f"unknown combine method {method!r}")


def normalized(weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weights scaled to sum to 1. Raises if none is positive."""
    values = _small_floats(weights)
    if values is not None:
        return np.array(_normalized_floats(values), dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be a 1-D array of finite non-negative numbers")
    total = w.sum()
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    return np.asarray(w / float(total), dtype=np.float64)


def renormalized(weights: Sequence[float] | FloatArray, answered: Sequence[bool]) -> FloatArray:
    """Weights over the members that answered, scaled to sum to 1; the others get 0."""
    values = _small_floats(weights)
    flags = None if values is None else _small_flags(answered, len(values))
    if values is not None and flags is not None:
        return normalized([v * (1.0 if a else 0.0) for v, a in zip(values, flags, strict=True)])
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
    values = _small_floats(weights)
    flags = None if values is None else _small_flags(answered, len(values))
    if values is not None and flags is not None:
        if sum(flags) < max(min_members, 1):
            return False
        shares = _normalized_floats(values)
        answered_weight = _numpy_sum([w for w, a in zip(shares, flags, strict=True) if a])
        return answered_weight + 1e-12 >= min_weight
    mask = np.asarray(answered, dtype=bool)
    if int(mask.sum()) < max(min_members, 1):
        return False
    answered_weight = float(normalized(weights)[mask].sum())
    return answered_weight + 1e-12 >= min_weight


def _weighted_sum(w: FloatArray, arr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``np.tensordot(w, arr, axes=(0, 0))`` as one dot product, without tensordot's overhead."""
    if arr.ndim == 0 or arr.shape[0] != w.shape[0]:
        return np.asarray(np.tensordot(w, arr, axes=(0, 0)))  # numpy's own error
    flat = arr.reshape(arr.shape[0], math.prod(arr.shape[1:]))
    return np.asarray(np.dot(w, flat).reshape(arr.shape[1:]))


def weighted_mean(stack: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weighted mean over axis 0 of ``stack`` (members first), in float64, cast back to its dtype."""
    w = normalized(weights)
    arr = np.asarray(stack)
    if arr.shape[0] != w.shape[0]:
        raise ValueError(f"{arr.shape[0]} member answers for {w.shape[0]} weights")
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    mean = _weighted_sum(w, arr.astype(np.float64, copy=False))
    return np.asarray(mean, dtype=out_dtype)


def weighted_spread(stack: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray) -> FloatArray:
    """Weighted standard deviation across members, element-wise: the disagreement signal."""
    w = normalized(weights)
    arr = np.asarray(stack, dtype=np.float64)
    mean = _weighted_sum(w, arr)
    var = _weighted_sum(w, (arr - mean) ** 2)
    out_dtype = stack.dtype if np.issubdtype(stack.dtype, np.floating) else np.dtype(np.float64)
    return np.asarray(np.sqrt(var), dtype=out_dtype)


def combine_outputs(
    member_outputs: Sequence[Mapping[str, npt.NDArray[np.generic]]],
    weights: Sequence[float] | FloatArray,
) -> dict[str, FloatArray]:
    """Combine each named output on its own across members (all members must share the outputs)."""
    if not member_outputs:
        raise ValueError("no member answers to combine")
    names = list(member_outputs[0])
    combined: dict[str, FloatArray] = {}
    for name in names:
        stack = np.stack([np.asarray(out[name]) for out in member_outputs])
        combined[name] = weighted_mean(stack, weights)
    return combined


def disagreement(stack: npt.NDArray[np.generic], weights: Sequence[float] | FloatArray) -> float:
    """One number per request: the mean across elements of the weighted member spread."""
    return float(np.mean(weighted_spread(stack, weights)))
