"""Tensor values of the Open Inference Protocol ↔ numpy: JSON ``data``, raw bytes, typed lists.

A request tensor names its datatype and shape; its values come as JSON ``data`` (nested in the
shape or flattened, row-major), as raw little-endian bytes (REST's binary tensor data extension,
gRPC's ``raw_input_contents``) or as the typed list of gRPC's ``InferTensorContents``. Every path
checks that the values fit the datatype and that their count is what the shape holds, so a bad
tensor is a one-line InvalidArgument before any model runs. ``BYTES`` elements in raw form are
each prefixed by their length as a 4-byte little-endian integer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from serving.errors import InvalidArgument
from serving.oip.datatypes import BYTES, numpy_dtype_of
from serving.tensors import STRING_DTYPE
from serving.tensors.proto import (
    MAX_RANK,
    _as_bytes,  # the rule for a string array's elements
    _Budget,  # the decoded-size bound TF Serving's routes use too
    _check_extent,  # the limits of an addressable shape, as TF Serving's routes check them
)

_LENGTH: Final = struct.Struct("<I")
_BOOL_KIND: Final = "b"


def checked_shape(tensor: str, shape: Any) -> tuple[int, ...]:
    """A request tensor's shape: a list of at most :data:`MAX_RANK` non-negative integers."""
    if not isinstance(shape, list | tuple) or any(type(dim) is not int or dim < 0 for dim in shape):
        raise InvalidArgument(
            f"tensor {tensor!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"tensor {tensor!r}: shape has {len(shape)} dimensions, at most {MAX_RANK} are supported"
        )
    return tuple(shape)


def decode_budget(max_bytes: int | None) -> _Budget:
    """What one request's input tensors may decode to together (None: no bound)."""
    return _Budget(max_bytes)


def charge(budget: _Budget, tensor: str, datatype: str, shape: Sequence[int]) -> None:
    """Charge a tensor's decoded size, from its declared shape and datatype, before it is decoded.

    InvalidArgument when the request's tensors together would pass the bound: a small body that
    declares a huge shape is refused before numpy allocates anything. A ``BYTES`` element counts
    as one object reference; its text is already in the body.
    """
    itemsize = numpy_dtype_of(datatype, tensor).itemsize
    count = math.prod(shape)
    try:
        _check_extent(shape, count, itemsize, datatype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"tensor {tensor!r}: {exc.message}") from None
    budget.take(tensor, shape, datatype, count * itemsize)


def _count_error(tensor: str, shape: Sequence[int], got: int) -> InvalidArgument:
    return InvalidArgument(
        f"tensor {tensor!r}: shape {list(shape)} holds {math.prod(shape)} values, the data has {got}"
    )


# --------------------------------------------------------------------------- JSON data


def _leaves(tensor: str, data: Any) -> list[Any]:
    """The values of a nested JSON list, row-major; a ragged list is an error."""
    if not isinstance(data, list):
        return [data]
    level: list[Any] = data
    while level and all(isinstance(item, list) for item in level):
        sizes = {len(item) for item in level}
        if len(sizes) != 1:
            raise InvalidArgument(f"tensor {tensor!r}: data is a ragged nested list")
        level = [value for item in level for value in item]
    if any(isinstance(item, list) for item in level):
        raise InvalidArgument(f"tensor {tensor!r}: data is a ragged nested list")
    return level


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int | float):
        return "numbers"
    if isinstance(value, str):
        return "strings"
    return "objects"


def from_json(
    tensor: str, datatype: str, shape: Sequence[int], data: Any, *, may_hold_bools: bool = True
) -> np.ndarray:
    """A tensor from JSON ``data``, typed by ``datatype`` and shaped by ``shape``.

    Numbers take numpy's whole-array path. ``may_hold_bools=False`` (no ``true``/``false`` in the
    body) skips the value-by-value look for booleans that numpy would quietly read as 0 and 1.
    """
    dtype = numpy_dtype_of(datatype, tensor)
    if datatype == BYTES:
        values = _leaves(tensor, data)
        if any(not isinstance(value, str) for value in values):
            odd = next(value for value in values if not isinstance(value, str))
            raise InvalidArgument(f"tensor {tensor!r}: BYTES data must be strings, got {_json_kind(odd)}")
        flat = np.empty(len(values), dtype=STRING_DTYPE)
        flat[:] = [value.encode("utf-8") for value in values]
    else:
        flat = _numbers(tensor, datatype, dtype, data, may_hold_bools)
    if flat.size != math.prod(shape):
        raise _count_error(tensor, shape, flat.size)
    return flat.reshape(shape)


def _numbers(tensor: str, datatype: str, dtype: np.dtype[Any], data: Any, may_hold_bools: bool) -> np.ndarray:
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(f"tensor {tensor!r}: data is a ragged nested list") from None
    flat = array.reshape(-1)
    if flat.size == 0:
        return flat.astype(dtype)
    kind = array.dtype.kind
    wants_bools = dtype.kind == _BOOL_KIND
    if wants_bools:
        if kind != _BOOL_KIND:
            raise InvalidArgument(
                f"tensor {tensor!r}: BOOL data must be booleans, got {_found(tensor, data, 'booleans')}"
            )
        return flat
    if kind not in "iuf" or (may_hold_bools and any(isinstance(v, bool) for v in _leaves(tensor, data))):
        raise InvalidArgument(
            f"tensor {tensor!r}: {datatype} data must be numbers, got {_found(tensor, data, 'numbers')}"
        )
    if dtype.kind in "iu":
        if kind == "f":
            raise InvalidArgument(f"tensor {tensor!r}: {datatype} data must be integers, got fractions")
        _check_range(tensor, datatype, dtype, flat)
    return flat.astype(dtype)


def _found(tensor: str, data: Any, wanted: str) -> str:
    """What the values are besides the ``wanted`` kind, for the error message."""
    kinds = sorted({_json_kind(value) for value in _leaves(tensor, data)} - {wanted})
    # Only numbers, yet numpy could not hold them: integers beyond 64 bits.
    return " and ".join(kinds) if kinds else "integers too large for 64 bits"


def _check_range(tensor: str, datatype: str, dtype: np.dtype[Any], values: np.ndarray) -> None:
    limits = np.iinfo(dtype)
    low, high = int(values.min()), int(values.max())
    if low < limits.min or high > limits.max:
        bad = low if low < limits.min else high
        raise InvalidArgument(f"tensor {tensor!r}: value {bad} is out of range for {datatype}")


# --------------------------------------------------------------------------- typed lists (gRPC)


def from_values(tensor: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> np.ndarray:
    """A tensor from the typed list of ``InferTensorContents`` that matches its datatype."""
    dtype = numpy_dtype_of(datatype, tensor)
    if len(values) != math.prod(shape):
        raise _count_error(tensor, shape, len(values))
    if datatype == BYTES:
        flat = np.empty(len(values), dtype=STRING_DTYPE)
        flat[:] = list(values)
        return flat.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4 and len(values):
        # INT8/INT16 travel in int32 fields, UINT8/UINT16 in uint32 ones: a value may not fit.
        _check_range(tensor, datatype, dtype, np.array(values, dtype=np.int64))
    return np.array(values, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- raw bytes


def from_raw(tensor: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A tensor from raw bytes: little-endian values, or length-prefixed ``BYTES`` elements."""
    dtype = numpy_dtype_of(datatype, tensor)
    count = math.prod(shape)
    if datatype == BYTES:
        flat = _split_bytes(tensor, raw)
        if flat.size != count:
            raise _count_error(tensor, shape, flat.size)
        return flat.reshape(shape)
    wire = dtype.newbyteorder("<")
    if len(raw) != count * wire.itemsize:
        raise InvalidArgument(
            f"tensor {tensor!r}: shape {list(shape)} of {datatype} needs {count * wire.itemsize} bytes, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=wire).astype(dtype, copy=False).reshape(shape)


def _split_bytes(tensor: str, raw: bytes) -> np.ndarray:
    values: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise InvalidArgument(f"tensor {tensor!r}: BYTES data ends inside an element's length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise InvalidArgument(
                f"tensor {tensor!r}: a BYTES element of {length} bytes runs past the end of the data"
            )
        values.append(raw[offset : offset + length])
        offset += length
    flat = np.empty(len(values), dtype=STRING_DTYPE)
    flat[:] = values
    return flat


def to_raw(array: np.ndarray) -> bytes:
    """An output's values as raw bytes, the inverse of :func:`from_raw`."""
    if array.dtype.kind in "OSU":
        return b"".join(_LENGTH.pack(len(value)) + value for value in map(_as_bytes, array.reshape(-1)))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# --------------------------------------------------------------------------- JSON output


def to_json(array: np.ndarray) -> Any:
    """An output's values as JSON ``data``, flattened row-major: a numpy array orjson writes
    directly, or a list of strings for ``BYTES`` (UTF-8, undecodable bytes replaced)."""
    if array.dtype.kind in "OSU":
        return [_as_bytes(value).decode("utf-8", errors="replace") for value in array.reshape(-1)]
    if array.dtype == np.float16:
        array = array.astype(np.float32)  # orjson has no half floats; every FP16 value is exact in FP32
    return np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("="))
