"""A request's inputs checked against the manifest, and put in the form every member is sent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contracts.manifest import Manifest, TensorSpec
from serving.errors import InvalidArgument

_DTYPES: dict[str, np.dtype[np.generic]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
    "string": np.dtype(np.object_),
}


def wire_dtype(spec: TensorSpec) -> np.dtype[np.generic]:
    """The numpy dtype a manifest tensor travels as (strings as Python bytes objects)."""
    return _DTYPES[spec.dtype]


def validate_inputs(manifest: Manifest, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Check names, dtypes and shapes against the manifest before any fan-out; the inputs as sent on.

    An input of one value per instance is taken in both forms clients write, ``[n]`` (a scalar per
    record) and ``[n, 1]`` (a one-element list per record), and sent on in the form the manifest
    declares: ensembles exported with ``[-1, 1]`` keep serving plain records, and clients that
    learned the nested form keep working with ``[-1]`` exports. Strings in any numpy flavour are
    sent on as the object dtype the member callers encode.
    """
    expected = {spec.name: spec for spec in manifest.inputs}
    missing = sorted(set(expected) - set(inputs))
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise InvalidArgument(f"{'; '.join(parts)}; expected {', '.join(expected)}")
    conformed: dict[str, np.ndarray] | None = None
    batch: int | None = None
    for name, spec in expected.items():
        array = _conformed(name, spec, inputs[name])
        if array is not inputs[name]:
            conformed = conformed if conformed is not None else dict(inputs)
            conformed[name] = array
        if batch is None:
            batch = int(array.shape[0])
        elif array.shape[0] != batch:
            raise InvalidArgument(
                f"all inputs must share the batch dimension: input {name!r} has {array.shape[0]} rows, "
                f"others {batch}"
            )
    return inputs if conformed is None else conformed


def _conformed(name: str, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` checked against ``spec`` and in its wire form (the same object when it already is)."""
    want = wire_dtype(spec)
    strings = want == np.dtype(np.object_)
    if array.dtype != want and not (strings and array.dtype.kind in {"S", "U", "O"}):
        raise InvalidArgument(f"input {name!r} must be {spec.dtype}, got {array.dtype.name}")
    if array.ndim != len(spec.shape):
        single = _as_single_value_form(array, spec.shape)
        if single is None:
            raise InvalidArgument(
                f"input {name!r} must have shape {_shape_text(spec.shape)}, got {list(array.shape)}"
            )
        array = single
    for got, dim in zip(array.shape[1:], spec.shape[1:], strict=True):
        if dim != -1 and got != dim:
            raise InvalidArgument(
                f"input {name!r} must have shape {_shape_text(spec.shape)}, got {list(array.shape)}"
            )
    return array.astype(np.object_) if strings and array.dtype.kind != "O" else array


def _as_single_value_form(array: np.ndarray, shape: Sequence[int]) -> np.ndarray | None:
    """``array`` ([n] or [n, 1]) reshaped to a one-value-per-instance ``shape``; None if it is not one."""
    if list(shape) == [-1] and array.ndim == 2 and array.shape[1] == 1:
        return array.reshape(-1)
    if list(shape) == [-1, 1] and array.ndim == 1:
        return array.reshape(-1, 1)
    return None


def _shape_text(shape: Sequence[int]) -> str:
    return (
        "["
        + ", ".join("batch" if i == 0 else ("any" if d == -1 else str(d)) for i, d in enumerate(shape))
        + "]"
    )
