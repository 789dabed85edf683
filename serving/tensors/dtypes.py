"""TensorFlow's DataType and numpy's dtypes, each way, with TensorFlow's own type names.

String tensors (``DT_STRING``) are numpy ``object`` arrays holding ``bytes``.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from serving.errors import InvalidArgument, Unimplemented
from serving.protos import DataType

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
