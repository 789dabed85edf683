"""TF Serving's REST predict answer: ``predictions`` or ``outputs`` as JSON."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidArgument
from serving.tensors.proto import _as_bytes


def format_predict_response(outputs: Mapping[str, np.ndarray], *, columnar: bool) -> bytes:
    """TF Serving's predict answer: ``predictions`` (row requests) or ``outputs`` (columnar).

    One output gives the tensor itself; several give one object per row (row format) or one
    object keyed by output name (columnar). Outputs named ``*_bytes`` are written as ``{"b64": …}``.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(array) for name, array in outputs.items()}
    non_finite = any(_has_non_finite(array) for array in arrays.values())
    values = {name: _json_ready(name, array, as_lists=non_finite) for name, array in arrays.items()}
    if columnar:
        body: Any = next(iter(values.values())) if len(values) == 1 else values
        return _dumps({"outputs": body}, non_finite=non_finite)
    batch_size = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and len(array) != batch_size:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {len(array)} expecting: {batch_size}"
            )
        batch_size = len(array)
    if len(values) == 1:
        return _dumps({"predictions": next(iter(values.values()))}, non_finite=non_finite)
    rows = [{name: value[row] for name, value in values.items()} for row in range(batch_size)]
    return _dumps({"predictions": rows}, non_finite=non_finite)


def _has_non_finite(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


def _json_ready(name: str, array: np.ndarray, *, as_lists: bool) -> Any:
    """A value orjson writes as TF Serving would: numeric arrays stay numpy, strings become lists."""
    kind = array.dtype.kind
    if kind in "SUO":
        if name.endswith("_bytes"):
            return _nested(array, lambda value: {"b64": base64.b64encode(_as_bytes(value)).decode("ascii")})
        return _nested(array, lambda value: _as_bytes(value).decode("utf-8", errors="replace"))
    if kind == "c":
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {array.dtype}")
    if kind == "f" and array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    if as_lists:
        # orjson writes NaN as null where TF Serving writes bare NaN: the rare case goes through json,
        # with float32 values in their shortest float32 spelling rather than as widened doubles.
        if array.dtype == np.float32:
            return _nested(array, lambda value: float(np.format_float_positional(np.float32(value))))
        return array.tolist()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def _nested(array: np.ndarray, convert: Callable[[Any], Any]) -> Any:
    if array.ndim == 0:
        return convert(array.item())
    return _reshape_list([convert(value) for value in array.reshape(-1)], array.shape)


def _reshape_list(flat: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_reshape_list(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _dumps(doc: Any, *, non_finite: bool) -> bytes:
    if non_finite:
        return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode()
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
