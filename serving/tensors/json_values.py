"""JSON values as typed numpy arrays, value by value where numpy cannot take them whole.

This is the checked walk: it converts as TF Serving converts (narrow integers wrap, floats must
fit) and refuses what TF Serving refuses, with its messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Final

import numpy as np

from serving.errors import InvalidArgument, Unimplemented
from serving.protos import DataType
from serving.tensors.dtypes import _DT_STRING, STRING_DTYPE, data_type_name, numpy_dtype
from serving.tensors.proto import MAX_RANK

_PREVIEW_CHARS: Final = 256


def _preview(value: Any) -> str:
    """A JSON rendering of a request value for error messages, cut short for big values."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=True, default=str)
    except (RecursionError, ValueError):
        text = "[...]" if isinstance(value, list) else "{...}"
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_FLOAT_EXACT_INT: Final = {
    np.dtype(np.float16): 2**11,
    np.dtype(np.float32): 2**24,
    np.dtype(np.float64): 2**53,
}


def _fast_numeric(value: Any, dtype: np.dtype[Any]) -> np.ndarray | None:
    """``value`` as ``dtype`` when numpy can take it whole and TF Serving would accept it, else None."""
    try:
        inferred = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged or odd: the checked walk says what is wrong
    kind = inferred.dtype.kind
    if dtype.kind == "b":
        return inferred if kind == "b" else None
    if dtype.kind == "f":
        if kind in "iu":
            # JSON integers become floats only when exactly representable (TF's lossless rule).
            limit = _FLOAT_EXACT_INT[dtype]
            if inferred.size and int(np.abs(inferred).max()) >= limit:
                return None
            return inferred.astype(dtype)
        if kind == "f":
            if dtype.itemsize < 8 and inferred.size:
                finite = np.abs(inferred[np.isfinite(inferred)])
                if finite.size and float(finite.max()) > float(np.finfo(dtype).max):
                    return None
            return inferred.astype(dtype)
        return None
    if dtype.kind in "iu" and kind in "iu":
        if inferred.size:
            info = np.iinfo(dtype)
            if int(inferred.min()) < info.min or int(inferred.max()) > info.max:
                return None
        return inferred.astype(dtype)
    return None


def _dense_shape(value: Any) -> list[int]:
    """TF Serving's shape of a JSON value: follow the first element of each nested list."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > MAX_RANK:
            raise InvalidArgument(
                f"JSON Value: lists nested more than {MAX_RANK} levels deep; "
                f"a tensor has at most {MAX_RANK} dimensions"
            )
        if not value:
            break
        value = value[0]
    return shape


def _checked_column(value: Any, dtype_enum: int, key: str | None, *, batched: bool) -> np.ndarray:
    """The value-by-value conversion, with TF Serving's messages for every kind of bad input."""
    if not batched:
        shape = _dense_shape(value)
        flat: list[Any] = []
        _fill_values(value, 0, shape, dtype_enum, flat)
        return _array(flat, shape, dtype_enum)
    item_shape: list[int] | None = None
    item_size = 0
    flat = []
    for index, item in enumerate(value):
        shape = _dense_shape(item)
        values: list[Any] = []
        try:
            _fill_values(item, 0, shape, dtype_enum, values)
            if item_shape is None:
                item_shape, item_size = shape, len(values)
            elif len(values) != item_size:
                raise InvalidArgument(f"Expecting tensor size: {item_size} but got: {len(values)}")
            elif shape != item_shape:
                raise InvalidArgument(
                    f"Expecting shape [{','.join(map(str, item_shape))}] "
                    f"but got: [{','.join(map(str, shape))}]"
                )
        except InvalidArgument as exc:
            where = f"{index}" if key is None else f"{index} key: {key}"
            raise InvalidArgument(
                f"Failed to process element: {where} of 'instances' list. Error: INVALID_ARGUMENT: {exc}"
            ) from None
        flat.extend(values)
    return _array(flat, [len(value), *(item_shape or [])], dtype_enum)


def _fill_values(value: Any, level: int, shape: list[int], dtype_enum: int, out: list[Any]) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {_preview(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        out.append(_scalar(value, dtype_enum))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill_values(item, level + 1, shape, dtype_enum, out)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype_enum: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_preview(value)} Type: {_json_type(value)} is not of expected type: "
        f"{data_type_name(dtype_enum)}"
    )


_INT_RANGES: Final[dict[int, tuple[int, int]]] = {
    DataType.DT_INT8: (-(2**31), 2**31 - 1),
    DataType.DT_INT16: (-(2**31), 2**31 - 1),
    DataType.DT_INT32: (-(2**31), 2**31 - 1),
    DataType.DT_UINT8: (-(2**31), 2**31 - 1),
    DataType.DT_UINT16: (-(2**31), 2**31 - 1),
    DataType.DT_INT64: (-(2**63), 2**63 - 1),
    DataType.DT_UINT32: (0, 2**32 - 1),
    DataType.DT_UINT64: (0, 2**64 - 1),
}


_DT_BOOL: Final = int(DataType.DT_BOOL)
_F32_MAX: Final = float(np.finfo(np.float32).max)
_F64_MAX: Final = float(np.finfo(np.float64).max)
# Float targets: the name TF's message uses, the first integer that is not exact, the largest value.
_FLOAT_TARGETS: Final[dict[int, tuple[str, int, float]]] = {
    DataType.DT_FLOAT: ("float", 2**24, _F32_MAX),
    DataType.DT_HALF: ("float", 2**24, _F32_MAX),
    DataType.DT_BFLOAT16: ("float", 2**24, _F32_MAX),
    DataType.DT_DOUBLE: ("double", 2**53, _F64_MAX),
}


def _scalar(value: Any, dtype_enum: int) -> Any:
    kind = type(value)
    if dtype_enum == _DT_STRING:
        if kind is str:
            return value.encode("utf-8")
        if kind is dict:
            if not _is_b64(value):
                raise InvalidArgument(
                    f"JSON Value: {_preview(value)} not formatted correctly for base64 data"
                )
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument("Unable to base64 decode") from None
        raise _type_error(value, dtype_enum)
    if kind is bool:
        if dtype_enum == _DT_BOOL:
            return value
        raise _type_error(value, dtype_enum)
    if dtype_enum == _DT_BOOL or (kind is not int and kind is not float):
        raise _type_error(value, dtype_enum)
    target = _FLOAT_TARGETS.get(dtype_enum)
    if target is not None:
        name, exact_below, largest = target
        magnitude = abs(value)
        lossy = magnitude >= exact_below if kind is int else largest < magnitude < math.inf
        if lossy:
            raise InvalidArgument(
                f"Cannot convert JSON value: {_preview(value)} to {name} without loss of precision."
            )
        return value
    limits = _INT_RANGES.get(dtype_enum)
    if limits is not None:
        if kind is float or not limits[0] <= value <= limits[1]:
            raise _type_error(value, dtype_enum)
        return value
    raise Unimplemented(f"Conversion of JSON Value: {_preview(value)} to type: {data_type_name(dtype_enum)}")


def _array(flat: list[Any], shape: list[int], dtype_enum: int) -> np.ndarray:
    dtype = numpy_dtype(dtype_enum)
    if dtype_enum == DataType.DT_STRING:
        array = np.empty(len(flat), dtype=STRING_DTYPE)
        array[:] = flat
        return array.reshape(shape)
    # Narrow integer types wrap as TF does when it stores int_val into int8/uint8/int16 tensors.
    wide = np.array(flat, dtype=np.float64 if dtype.kind == "f" else None)
    return wide.astype(dtype).reshape(shape)
