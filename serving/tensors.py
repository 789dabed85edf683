"""Tensor codecs: numpy ↔ TensorProto, DataType ↔ numpy dtype, and TF Serving's predict JSON.

This is the gateway's hot path. Numeric arrays cross as ``tensor_content`` (raw little-endian
bytes) and JSON bodies are converted with whole-array numpy operations; only strings, and bodies
that numpy cannot take in one step (ragged lists, mixed types), walk the values one by one, and
that slow walk is also what produces TF Serving's exact error messages.

String tensors (``DT_STRING``) are numpy ``object`` arrays holding ``bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from serving.core import TensorInfo
from serving.errors import InvalidArgument, ServingError, Unimplemented
from serving.protos import DataType, TensorProto, TensorShapeProto

STRING_DTYPE: Final = np.dtype(object)
"""The numpy dtype that carries ``DT_STRING`` values (``bytes`` objects)."""

# Plain ints for the hot path: reading ``DataType.DT_X`` goes through the enum wrapper's
# ``__getattr__`` on every access.
_DT_STRING: Final = int(DataType.DT_STRING)
_DT_BFLOAT16: Final = int(DataType.DT_BFLOAT16)

_NUMPY_BY_DTYPE: Final[dict[int, np.dtype[Any]]] = {
    DataType.DT_FLOAT: np.dtype(np.float32),
    DataType.DT_DOUBLE: np.dtype(np.float64),
    DataType.DT_HALF: np.dtype(np.float16),
    DataType.DT_INT8: np.dtype(np.int8),
    DataType.DT_INT16: np.dtype(np.int16),
    DataType.DT_INT32: np.dtype(np.int32),
    DataType.DT_INT64: np.dtype(np.int64),
    DataType.DT_UINT8: np.dtype(np.uint8),
    DataType.DT_UINT16: np.dtype(np.uint16),
    DataType.DT_UINT32: np.dtype(np.uint32),
    DataType.DT_UINT64: np.dtype(np.uint64),
    DataType.DT_BOOL: np.dtype(np.bool_),
    DataType.DT_COMPLEX64: np.dtype(np.complex64),
    DataType.DT_COMPLEX128: np.dtype(np.complex128),
    DataType.DT_STRING: STRING_DTYPE,
}
_DTYPE_BY_NUMPY: Final[dict[np.dtype[Any], int]] = {v: k for k, v in _NUMPY_BY_DTYPE.items()}
_ITEMSIZE: Final[dict[int, int]] = {
    **{int(k): v.itemsize for k, v in _NUMPY_BY_DTYPE.items()},
    _DT_BFLOAT16: 4,  # decoded as float32
}

# TensorFlow's DataTypeString(): the names its error messages use.
_TF_TYPE_NAME: Final[dict[int, str]] = {
    DataType.DT_FLOAT: "float",
    DataType.DT_DOUBLE: "double",
    DataType.DT_HALF: "half",
    DataType.DT_BFLOAT16: "bfloat16",
    DataType.DT_INT8: "int8",
    DataType.DT_INT16: "int16",
    DataType.DT_INT32: "int32",
    DataType.DT_INT64: "int64",
    DataType.DT_UINT8: "uint8",
    DataType.DT_UINT16: "uint16",
    DataType.DT_UINT32: "uint32",
    DataType.DT_UINT64: "uint64",
    DataType.DT_BOOL: "bool",
    DataType.DT_STRING: "string",
    DataType.DT_COMPLEX64: "complex64",
    DataType.DT_COMPLEX128: "complex128",
}


# --------------------------------------------------------------------------- dtypes


def numpy_dtype(data_type: int) -> np.dtype[Any]:
    """The numpy dtype for a ``tensorflow.DataType`` value; ``DT_BFLOAT16`` reads as float32."""
    if data_type == _DT_BFLOAT16:
        return np.dtype(np.float32)
    try:
        return _NUMPY_BY_DTYPE[data_type]
    except KeyError:
        raise Unimplemented(f"Tensor type {data_type_name(data_type)} is not supported") from None


def data_type(dtype: np.dtype[Any] | type) -> int:
    """The ``tensorflow.DataType`` for a numpy dtype; unicode and bytes arrays are ``DT_STRING``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return _DT_STRING
    try:
        return int(_DTYPE_BY_NUMPY[dtype.newbyteorder("=")])
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dtype} has no TensorFlow DataType") from None


def data_type_name(data_type: int) -> str:
    """TensorFlow's short name for a DataType (``float``, ``int64`` …), as in its messages."""
    if data_type in _TF_TYPE_NAME:
        return _TF_TYPE_NAME[data_type]
    try:
        return str(DataType.Name(data_type)).removeprefix("DT_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"unknown dtype enum ({data_type})"


# --------------------------------------------------------------------------- TensorProto


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


def _check_extent(shape: tuple[int, ...], count: int, itemsize: int, dtype_enum: int) -> None:
    """TensorFlow's "more than 2**63 - 1 elements", and numpy's limit on bytes, which applies even
    when a zero dimension leaves no elements at all."""
    extent = count or math.prod([size or 1 for size in shape])
    if extent > _INT64_MAX:
        raise InvalidArgument(f"Shape {list(shape)} would have more than 2**63 - 1 elements")
    if extent * itemsize > _INT64_MAX:
        raise InvalidArgument(
            f"Shape {list(shape)} of {data_type_name(dtype_enum)} is more than 2**63 - 1 bytes"
        )


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
    """The bytes one request's inputs may still decode to; None for no bound."""

    limit: int | None
    used: int = 0

    def take(self, name: str, shape: Sequence[int], dtype_enum: int, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            so_far = "" if size == self.used else f"; with the inputs before it, {self.used} bytes"
            raise InvalidArgument(
                f"tensor parsing error: {name}: shape {list(shape)} of {data_type_name(dtype_enum)} "
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


# --------------------------------------------------------------------------- JSON request

SignatureLookup = Callable[[str], Mapping[str, TensorInfo]]
"""Maps a request's ``signature_name`` ("" for the default) to the signature's inputs."""


@dataclass(slots=True)
class PredictRequestJson:
    """A parsed REST predict body."""

    inputs: dict[str, np.ndarray]
    signature_name: str
    columnar: bool
    """True for ``inputs`` (the answer uses ``outputs``), False for ``instances``."""


_PREVIEW_CHARS: Final = 256


def _preview(value: Any) -> str:
    """A JSON rendering of a request value for error messages, cut short for big values."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=True, default=str)
    except (RecursionError, ValueError):
        text = "[...]" if isinstance(value, list) else "{...}"
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


_UTF8_BOM: Final = b"\xef\xbb\xbf"
_NON_FINITE_TOKEN: Final = re.compile(rb"NaN|Infinity")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def load_json(body: bytes | str) -> Any:
    """Parse a JSON body as TF Serving's parser (RapidJSON) does, or refuse it with a 400.

    UTF-8 only; a leading UTF-8 byte order mark is skipped, as RapidJSON's UTF-8 stream skips it;
    bare ``NaN``/``Infinity``/``-Infinity`` are accepted. Other encodings, numbers too large for a
    double (``1e309``) and lone UTF-16 surrogates (``"\\ud800"``) are parse errors. orjson does
    all of this except the bare tokens; only bodies holding one take the standard parser.
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    if not raw or raw.isspace():
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _NON_FINITE_TOKEN.search(raw) is None:
            raise InvalidArgument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    return _load_with_non_finite(raw)


def _load_with_non_finite(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    offset = _lone_surrogate_at(text)
    if offset is not None:
        raise InvalidArgument(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"
        )
    try:
        return json.loads(text, parse_float=_finite_float, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidArgument(f"JSON Parse error: Number too big to be stored in double: {text[:40]}")
    return value


def _json_int(text: str) -> int | float:
    # Beyond 64 bits RapidJSON (and orjson) read an integer as a double; Python's int() would
    # also refuse more than 4300 digits with a ValueError.
    return int(text) if len(text) <= 20 else _finite_float(text)


def _lone_surrogate_at(text: str) -> int | None:
    """Where a ``\\uD800``-style escape has no partner, or None (only the slow path asks)."""
    if "\\u" not in text:
        return None
    expect_low_at: int | None = None  # where a high surrogate's partner must start
    high_at = 0
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        if _backslashes_before(text, start) % 2:
            continue  # an escaped backslash followed by "u...": text, not an escape
        is_high = match.group()[3] in "89abAB"
        if expect_low_at is not None and (is_high or start != expect_low_at):
            return high_at
        if is_high:
            expect_low_at, high_at = match.end(), start
        elif expect_low_at is None:
            return start
        else:
            expect_low_at = None
    return high_at if expect_low_at is not None else None


def _backslashes_before(text: str | bytes, at: int) -> int:
    """How many backslashes come right before position ``at``: odd means ``text[at]`` is escaped."""
    backslash: str | int = "\\" if isinstance(text, str) else 0x5C
    first = at
    while first and text[first - 1] == backslash:
        first -= 1
    return at - first


def parse_predict_request(
    body: bytes | str | Mapping[str, Any], signature: SignatureLookup, max_bytes: int | None = None
) -> PredictRequestJson:
    """Turn a TF Serving predict body into named numpy inputs, typed by the signature's dtypes.

    Raises InvalidArgument with TF Serving's messages for malformed bodies; ``signature`` may raise
    (e.g. NotFound for an unknown model), which propagates unchanged. ``max_bytes`` bounds what the
    inputs together may decode to: a body holding too many values is refused before it is parsed
    (parsing makes a Python object of every value), then each input is checked on the shape of its
    lists before it is converted.
    """
    if isinstance(body, bytes | str):
        raw_body = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        _refuse_too_many_values(raw_body, signature, max_bytes)
    doc = load_json(body) if isinstance(body, bytes | str) else body
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {_preview(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(
            f"JSON Value: {_preview(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    infos = signature(signature_name)
    if not infos:
        raise InvalidArgument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_preview(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    # Lists holding true/false are the one case numpy silently coerces (True -> 1); such bodies
    # take the checked path. Byte search on the body is cheap compared to scanning the values.
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    may_hold_bools = not isinstance(raw, bytes) or b"true" in raw or b"false" in raw
    budget = _Budget(max_bytes)
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {_preview(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {_preview(doc)} No values in 'instances' array")
        inputs = _inputs_from_instances(instances, infos, may_hold_bools, budget)
        return PredictRequestJson(inputs, signature_name, columnar=False)
    if has_inputs:
        inputs = _inputs_from_columns(doc["inputs"], infos, may_hold_bools, budget)
        return PredictRequestJson(inputs, signature_name, columnar=True)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


_LARGEST_ITEMSIZE: Final = 8  # float64, int64, or one object reference per string


def _refuse_too_many_values(raw: bytes, signature: SignatureLookup, max_bytes: int | None) -> None:
    """InvalidArgument when the body's values, at the smallest input's size, exceed ``max_bytes``.

    Every JSON value takes at least two bytes (itself and a separator), so only a body longer than
    a quarter of the bound can hold too many; only such a body is counted, and only when the
    default signature is known (otherwise parsing reports the first error, as TF Serving does).
    """
    if max_bytes is None or (len(raw) // 2 + 1) * _LARGEST_ITEMSIZE <= max_bytes:
        return
    try:
        infos = signature("")
    except ServingError:
        return
    if not infos:
        return
    itemsize = min(info.dtype.itemsize for info in infos.values())
    values = _json_value_count(raw)
    if values * itemsize > max_bytes:
        raise InvalidArgument(
            f"The request body holds {values} values, {values * itemsize} bytes or more decoded, "
            f"more than the {max_bytes} bytes one request may decode to"
        )


def _json_value_count(raw: bytes) -> int:
    """How many values a JSON text holds, counted on its bytes without parsing it.

    A container of k elements has k - 1 commas, so the values are the commas outside strings plus
    one, less the empty containers. Used only as a bound: on text that is not JSON it is a guess.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(data == 0x22)
    if quotes.size and b'\\"' in raw:
        # A quote after an odd run of backslashes is part of a string, not its end.
        candidates = quotes[(quotes > 0) & (data[np.maximum(quotes - 1, 0)] == 0x5C)]
        escaped = [q for q in candidates.tolist() if _backslashes_before(raw, q) % 2]
        quotes = np.setdiff1d(quotes, np.asarray(escaped, dtype=quotes.dtype), assume_unique=True)
    commas = np.flatnonzero(data == 0x2C)
    outside = int(np.count_nonzero(np.searchsorted(quotes, commas) % 2 == 0))
    empty = sum(1 for _ in _EMPTY_CONTAINER.finditer(raw))
    return max(outside + 1 - empty, 0)


_EMPTY_CONTAINER: Final = re.compile(rb"[\[{][ \t\r\n]*[\]}]")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _inputs_from_instances(
    instances: list[Any], infos: Mapping[str, TensorInfo], may_hold_bools: bool, budget: _Budget
) -> dict[str, np.ndarray]:
    names = sorted(infos)
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    if not _is_named_object(instances[0]):
        name = next(iter(infos))
        for index, item in enumerate(instances):
            if _is_named_object(item):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
        column = _column(
            instances, infos[name], name, None, batched=True, may_hold_bools=may_hold_bools, budget=budget
        )
        return {name: column}
    wanted = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not _is_named_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for key in item:
            if key not in wanted:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {key}"
                )
        if len(item) != len(wanted):
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. JSON object: {_preview(item)} "
                f"keys must be equal to: {','.join(names)}"
            )
        for name in names:
            columns[name].append(item[name])
    return {
        name: _column(
            columns[name], infos[name], name, name, batched=True, may_hold_bools=may_hold_bools, budget=budget
        )
        for name in names
    }


def _inputs_from_columns(
    value: Any, infos: Mapping[str, TensorInfo], may_hold_bools: bool, budget: _Budget
) -> dict[str, np.ndarray]:
    if not _is_named_object(value):
        if len(infos) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        name, info = next(iter(infos.items()))
        return {
            name: _column(
                value, info, name, name, batched=False, may_hold_bools=may_hold_bools, budget=budget
            )
        }
    inputs: dict[str, np.ndarray] = {}
    for name in sorted(infos):
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        inputs[name] = _column(
            value[name], infos[name], name, name, batched=False, may_hold_bools=may_hold_bools, budget=budget
        )
    return inputs


def _column(
    value: Any,
    info: TensorInfo,
    name: str,
    key: str | None,
    *,
    batched: bool,
    may_hold_bools: bool,
    budget: _Budget,
) -> np.ndarray:
    """One input's values as an array of the signature's dtype: numpy first, the checked walk on doubt.

    ``key`` names the input in TF Serving's messages (None where it names none). What the values
    would decode to is charged to ``budget`` first, from the shape their first elements give.
    """
    dtype_enum = data_type(info.dtype)
    shape = _dense_shape(value)
    budget.take(name, shape, dtype_enum, math.prod(shape) * info.dtype.itemsize)
    if dtype_enum != DataType.DT_STRING and not (may_hold_bools and dtype_enum != DataType.DT_BOOL):
        fast = _fast_numeric(value, info.dtype)
        if fast is not None:
            return fast
    return _checked_column(value, dtype_enum, key, batched=batched)


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


# --------------------------------------------------------------------------- JSON response


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
