"""numpy arrays and TensorProto, each way: the gRPC hot path, with the size of a request bounded.

Numeric arrays cross as ``tensor_content`` (raw little-endian bytes). :func:`decode_inputs` adds
up what a request's tensors decode to before decoding any, so a request that declares a huge shape
is refused before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from serving.core import TensorInfo
from serving.errors import InvalidArgument
from serving.protos import DataType, TensorProto, TensorShapeProto
from serving.tensors.dtypes import (
    _DT_BFLOAT16,
    _DT_STRING,
    _DTYPE_BY_NUMPY,
    _ITEMSIZE,
    STRING_DTYPE,
    data_type,
    data_type_name,
    numpy_dtype,
)


def shape_proto(shape: Sequence[int]) -> TensorShapeProto:
    """A TensorShapeProto with these dimension sizes (-1 for unknown)."""
    proto = TensorShapeProto()
    for size in shape:
        proto.dim.add().size = int(size)
    return proto


def to_tensor_proto(array: np.ndarray | Any, data_type_override: int | None = None) -> TensorProto:
    """Encode an array: numeric values as little-endian ``tensor_content``, strings as ``string_val``.

    ``data_type_override`` casts to that DataType first (e.g. float64 data for a DT_FLOAT input).
    """
    array = np.asarray(array)
    dtype_enum = data_type(array.dtype) if data_type_override is None else data_type_override
    proto = TensorProto(dtype=dtype_enum)  # type: ignore[arg-type]
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if dtype_enum == _DT_STRING:
        proto.string_val.extend(_as_bytes(value) for value in array.reshape(-1))
        return proto
    if dtype_enum == _DT_BFLOAT16:
        bits = np.asarray(array, dtype=np.float32).view(np.uint32) >> 16
        proto.half_val.extend(bits.astype(np.int32).reshape(-1).tolist())
        return proto
    target = numpy_dtype(dtype_enum).newbyteorder("<")
    proto.tensor_content = np.ascontiguousarray(array, dtype=target).tobytes()
    return proto


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_ | np.str_):
        return _as_bytes(value.item())
    raise InvalidArgument(f"A string tensor holds a {type(value).__name__}, expected bytes or str")


MAX_RANK: Final = 64
"""The most dimensions a decoded tensor may have: numpy's limit (TensorFlow's is 254)."""

_INT64_MAX: Final = 2**63 - 1
_OBJECT_REF_BYTES: Final = np.dtype(object).itemsize


def tensor_shape(proto: TensorProto) -> tuple[int, ...]:
    """The fully defined shape of a TensorProto; an unknown rank or dimension is an error.

    Only the shape message is read, so this is cheap whatever the shape claims.
    """
    shape_message = proto.tensor_shape
    if shape_message.unknown_rank:
        raise InvalidArgument("Tensor has an unknown rank")
    shape = tuple([dim.size for dim in shape_message.dim])
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"Tensor has {len(shape)} dimensions, at most {MAX_RANK} are supported")
    if shape and min(shape) < 0:
        raise InvalidArgument(f"Tensor shape {list(shape)} is not fully defined")
    return shape


def _type_name(dtype: int | str) -> str:
    """A DataType enum's name (TF Serving's routes), or the Open Inference Protocol's datatype as given."""
    return dtype if isinstance(dtype, str) else data_type_name(dtype)


def _check_extent(shape: Sequence[int], count: int, itemsize: int, dtype: int | str) -> None:
    """TensorFlow's "more than 2**63 - 1 elements", and numpy's limit on bytes, which applies even
    when a zero dimension leaves no elements at all."""
    extent = count or math.prod([size or 1 for size in shape])
    if extent > _INT64_MAX:
        raise InvalidArgument(f"Shape {list(shape)} would have more than 2**63 - 1 elements")
    if extent * itemsize > _INT64_MAX:
        raise InvalidArgument(f"Shape {list(shape)} of {_type_name(dtype)} is more than 2**63 - 1 bytes")


def decoded_nbytes(proto: TensorProto, shape: tuple[int, ...]) -> int:
    """What decoding ``proto`` (of ``shape``, from :func:`tensor_shape`) would allocate, in bytes.

    Arithmetic on the declared shape only: a 42-byte message can declare a shape of gigabytes and
    fill it by broadcasting one value, so this is asked before anything is decoded. Strings count
    one object reference per element plus their bytes: the given values at most the tensor's own
    size on the wire, the last one again for every element it fills.
    """
    count = math.prod(shape)
    dtype_enum = proto.dtype
    if dtype_enum != _DT_STRING:
        return count * (_ITEMSIZE.get(dtype_enum) or numpy_dtype(dtype_enum).itemsize)
    values = proto.string_val
    given = len(values)
    text = int(proto.ByteSize())  # cheaper than reading every value, which copies it
    if count > given and given:
        text += (count - given) * len(values[given - 1])
    return count * _OBJECT_REF_BYTES + text


def from_tensor_proto(proto: TensorProto) -> np.ndarray:
    """Decode a TensorProto: ``tensor_content`` or the typed ``*_val`` field for its dtype.

    As in TensorFlow, a typed field shorter than the shape repeats its last value (so a single
    value fills the whole tensor) and an empty one means zeros. Requests from clients go through
    :func:`decode_inputs`, which bounds the size first.
    """
    shape = tensor_shape(proto)
    count = math.prod(shape)
    _check_extent(shape, count, _ITEMSIZE.get(proto.dtype, 1), proto.dtype)
    return _decode(proto, shape, count)


def _decode(proto: TensorProto, shape: tuple[int, ...], count: int) -> np.ndarray:
    """The ``count`` values of ``proto``, whose ``shape`` has passed :func:`_check_extent`."""
    dtype_enum = proto.dtype
    if dtype_enum == _DT_STRING:
        values = np.empty(len(proto.string_val), dtype=STRING_DTYPE)
        values[:] = list(proto.string_val)
        return _fill(values, shape, count, np.array([b""], dtype=STRING_DTYPE))
    dtype = numpy_dtype(dtype_enum)
    content = proto.tensor_content  # read once: every read of a bytes field makes a new object
    if content:
        wire = np.dtype("<u2") if dtype_enum == _DT_BFLOAT16 else dtype.newbyteorder("<")
        if len(content) != count * wire.itemsize:
            raise InvalidArgument(
                f"tensor_content has {len(content)} bytes, "
                f"shape {list(shape)} of {data_type_name(dtype_enum)} needs {count * wire.itemsize}"
            )
        if dtype_enum == _DT_BFLOAT16:
            bits = np.frombuffer(content, dtype=wire).astype(np.uint32) << 16
            return bits.view(np.float32).reshape(shape)
        return np.frombuffer(content, dtype=wire).astype(dtype, copy=False).reshape(shape)
    return _fill(_typed_values(proto, dtype_enum, dtype), shape, count, np.zeros(1, dtype=dtype))


@dataclass(slots=True)
class _Budget:
    """The bytes one request's inputs may still decode to; None for no bound.

    Shared by every route that decodes request tensors: TF Serving's (``dtype`` a DataType enum)
    and the Open Inference Protocol's (``dtype`` the protocol's datatype name, such as ``FP32``).
    """

    limit: int | None
    used: int = 0

    def take(self, name: str, shape: Sequence[int], dtype: int | str, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            so_far = "" if size == self.used else f"; with the inputs before it, {self.used} bytes"
            raise InvalidArgument(
                f"tensor parsing error: {name}: shape {list(shape)} of {_type_name(dtype)} "
                f"decodes to {size} bytes{so_far}, more than the {self.limit} bytes one request may decode to"
            )


def decode_inputs(
    protos: Mapping[str, TensorProto], signature: Mapping[str, TensorInfo], max_bytes: int | None
) -> dict[str, np.ndarray]:
    """A predict request's input tensors as arrays, each checked before it is allocated.

    Each tensor's dtype must be the signature's (TF Serving's "Expects arg[...]" error), its shape
    must be addressable, and all of them together may decode to at most ``max_bytes`` (None: no
    bound). Errors are InvalidArgument with TF Serving's "tensor parsing error: NAME" first. Names
    the signature lacks are decoded for the core to report alongside the missing ones.
    """
    # One pass: each tensor is decoded right after its check, so what is allocated never exceeds
    # the bound, whichever input is the one that would cross it.
    budget = _Budget(max_bytes)
    arrays: dict[str, np.ndarray] = {}
    for name, proto in protos.items():
        dtype_enum = proto.dtype
        info = signature.get(name)
        if info is not None:
            want = _DTYPE_BY_NUMPY.get(info.dtype)
            if want is None:
                want = data_type(info.dtype)
            if dtype_enum != want:
                raise InvalidArgument(
                    f"Expects arg[{name}] to be {data_type_name(want)} "
                    f"but {data_type_name(dtype_enum)} is provided"
                )
        itemsize = _ITEMSIZE.get(dtype_enum)
        if itemsize is None:
            raise InvalidArgument(
                f"tensor parsing error: {name}: Tensor type {data_type_name(dtype_enum)} is not supported"
            )
        try:
            shape = tensor_shape(proto)
            count = math.prod(shape)
            if not count or count * itemsize > _INT64_MAX:  # empty or enormous: the rare case
                _check_extent(shape, count, itemsize, dtype_enum)
            size = decoded_nbytes(proto, shape) if dtype_enum == _DT_STRING else count * itemsize
            budget.take(name, shape, dtype_enum, size)
            arrays[name] = _decode(proto, shape, count)
        except InvalidArgument as exc:
            message = exc.message
            prefix = f"tensor parsing error: {name}: "
            raise InvalidArgument(message if message.startswith(prefix) else prefix + message) from None
    return arrays


def _typed_values(proto: TensorProto, dtype_enum: int, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype_enum in (DataType.DT_HALF, DataType.DT_BFLOAT16):
        bits = np.array(proto.half_val, dtype=np.int32).astype(np.uint16)
        if dtype_enum == DataType.DT_HALF:
            return bits.view(np.float16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype_enum in (DataType.DT_COMPLEX64, DataType.DT_COMPLEX128):
        field = proto.scomplex_val if dtype_enum == DataType.DT_COMPLEX64 else proto.dcomplex_val
        parts = np.array(field, dtype=np.float32 if dtype_enum == DataType.DT_COMPLEX64 else np.float64)
        if parts.size % 2:
            raise InvalidArgument("A complex tensor needs real and imaginary parts in pairs")
        return parts.view(dtype)
    field_by_type: dict[int, Any] = {
        DataType.DT_FLOAT: proto.float_val,
        DataType.DT_DOUBLE: proto.double_val,
        DataType.DT_INT32: proto.int_val,
        DataType.DT_INT16: proto.int_val,
        DataType.DT_INT8: proto.int_val,
        DataType.DT_UINT8: proto.int_val,
        DataType.DT_UINT16: proto.int_val,
        DataType.DT_INT64: proto.int64_val,
        DataType.DT_BOOL: proto.bool_val,
        DataType.DT_UINT32: proto.uint32_val,
        DataType.DT_UINT64: proto.uint64_val,
    }
    return np.array(field_by_type[dtype_enum]).astype(dtype, copy=False)


def _fill(values: np.ndarray, shape: tuple[int, ...], count: int, zero: np.ndarray) -> np.ndarray:
    if values.size == count:
        return values.reshape(shape)
    if values.size > count:
        raise InvalidArgument(f"Tensor has {values.size} values but its shape {list(shape)} holds {count}")
    fill = values[-1:] if values.size else zero
    return np.concatenate([values, np.repeat(fill, count - values.size)]).reshape(shape)
