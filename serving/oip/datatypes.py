"""The Open Inference Protocol's tensor datatypes (``FP32``, ``BYTES`` …) and their numpy dtypes.

String tensors are numpy ``object`` arrays holding ``bytes``, as everywhere in the serving code
(``serving.tensors.STRING_DTYPE``), and travel as ``BYTES``.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from serving.errors import InvalidArgument
from serving.tensors import STRING_DTYPE, numpy_dtype

BYTES: Final = "BYTES"

_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    BYTES: STRING_DTYPE,
}
_BY_NUMPY: Final[dict[np.dtype[Any], str]] = {dtype: name for name, dtype in _NUMPY.items()}

DATATYPES: Final = tuple(_NUMPY)
"""Every datatype served here; the protocol's BF16 has no numpy dtype and is not among them."""


def numpy_dtype_of(datatype: str, tensor: str) -> np.dtype[Any]:
    """The numpy dtype of a datatype named in a request; InvalidArgument naming ``tensor`` if unknown."""
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise InvalidArgument(
            f"tensor {tensor!r} has datatype {datatype!r}, expected one of {', '.join(DATATYPES)}"
        )
    return dtype


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The datatype an array of ``dtype`` travels as; unicode and bytes arrays are ``BYTES``."""
    if dtype.kind in "OSU":
        return BYTES
    name = _BY_NUMPY.get(dtype.newbyteorder("="))
    if name is None:
        raise InvalidArgument(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def datatype_of_tf(data_type: int) -> str:
    """The datatype of a ``tensorflow.DataType`` in a signature (for model metadata).

    A type the protocol cannot carry (complex numbers) is named as TensorFlow names it, so that
    metadata still describes the model instead of failing.
    """
    dtype = numpy_dtype(data_type)
    name = _BY_NUMPY.get(dtype)
    return name if name is not None else dtype.name.upper()
