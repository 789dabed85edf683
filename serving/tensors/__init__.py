"""Tensor codecs: numpy ↔ TensorProto, DataType ↔ numpy dtype, and TF Serving's predict JSON.

This is the gateway's hot path, split by job: ``dtypes`` (DataType ↔ numpy), ``proto`` (numpy ↔
TensorProto, and the bounded decoding of a gRPC request), ``json_load`` (a body parsed as TF
Serving parses it), ``json_request`` (a REST predict body as named inputs), ``json_values`` (the
checked value-by-value conversion and its error messages), ``json_response`` (the answer as JSON).
The names other packages use are exported here.

String tensors (``DT_STRING``) are numpy ``object`` arrays holding ``bytes``.
"""

from __future__ import annotations

from serving.tensors.dtypes import STRING_DTYPE, data_type, data_type_name, numpy_dtype
from serving.tensors.json_load import load_json
from serving.tensors.json_request import PredictRequestJson, SignatureLookup, parse_predict_request
from serving.tensors.json_response import format_predict_response
from serving.tensors.proto import (
    MAX_RANK,
    decode_inputs,
    decoded_nbytes,
    from_tensor_proto,
    shape_proto,
    tensor_shape,
    to_tensor_proto,
)

__all__ = [
    "MAX_RANK",
    "STRING_DTYPE",
    "PredictRequestJson",
    "SignatureLookup",
    "data_type",
    "data_type_name",
    "decode_inputs",
    "decoded_nbytes",
    "format_predict_response",
    "from_tensor_proto",
    "load_json",
    "numpy_dtype",
    "parse_predict_request",
    "shape_proto",
    "tensor_shape",
    "to_tensor_proto",
]
