"""The protocol's REST bodies: the inference request and response JSON, with binary tensor data.

Triton's binary tensor data extension, which ``tritonclient.http`` uses by default: the JSON
object comes first and its length is in the ``Inference-Header-Content-Length`` header; the
tensors whose ``parameters`` carry ``binary_data_size`` follow it as raw bytes, in the order of
the tensors. An output is returned that way when the request asks for it (the output's
``binary_data`` parameter, else the request's ``binary_data_output``); otherwise as JSON ``data``,
flattened row-major. JSON has no NaN: non-finite values in JSON ``data`` are written as ``null``,
binary data carries them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from serving.errors import InvalidArgument
from serving.oip import codec
from serving.oip.service import InferAnswer, InferRequest, InputTensor, ParameterValue
from serving.tensors import load_json

HEADER_LENGTH: Final = "inference-header-content-length"
"""The header that gives the JSON part's length when binary tensor data follows it."""

BINARY_SIZE: Final = "binary_data_size"
_BINARY_OUTPUT: Final = "binary_data"
_BINARY_OUTPUTS: Final = "binary_data_output"
# Triton parameters that need shared memory or model configuration this server does not have.
_UNSUPPORTED: Final = ("shared_memory_region", "classification")


@dataclass(frozen=True, slots=True)
class RestInferRequest:
    """A decoded request body, with how each output is to be returned."""

    request: InferRequest
    binary_outputs: Mapping[str, bool | None]
    """Requested outputs by name: True for binary data, False for JSON, None for the default."""
    binary_default: bool
    """The request's ``binary_data_output``: how any other output is returned."""


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    return value


def _parameters(value: Any, what: str) -> dict[str, ParameterValue]:
    if value is None:
        return {}
    parameters = _object(value, f"{what} 'parameters'")
    for key, item in parameters.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidArgument(f"{what} parameter {key!r} must be a string, number or boolean")
        if key in _UNSUPPORTED:
            raise InvalidArgument(f"{what} parameter {key!r} is not supported by this server")
    return parameters


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length is {header_length!r}, the body has {len(body)} bytes"
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def _requested_outputs(raw_outputs: object) -> dict[str, bool | None]:
    """The outputs a request names, each with its binary_data choice (None: the request's default)."""
    if not isinstance(raw_outputs, list):
        raise InvalidArgument("'outputs' must be a list")
    binary_outputs: dict[str, bool | None] = {}
    for index, raw in enumerate(raw_outputs):
        output = _object(raw, f"output {index}")
        name = _string(output.get("name"), f"output {index} 'name'")
        as_binary = _parameters(output.get("parameters"), f"output {name!r}").get(_BINARY_OUTPUT)
        binary_outputs[name] = None if as_binary is None else bool(as_binary)
    return binary_outputs


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    *,
    model_name: str,
    model_version: str,
    max_decoded_bytes: int | None = None,
) -> RestInferRequest:
    """Decode an inference request body; InvalidArgument with one line for anything malformed.

    ``max_decoded_bytes`` bounds what the input tensors decode to together, checked from each
    tensor's declared shape and datatype before its values are read.
    """
    json_part, binary = _split(body, header_length)
    doc = _object(load_json(json_part), "the request body")
    request_id = _string(doc.get("id", ""), "'id'")
    parameters = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of tensors")
    may_hold_bools = b"true" in json_part or b"false" in json_part
    inputs: list[InputTensor] = []
    offset = 0
    budget = codec.decode_budget(max_decoded_bytes)
    for index, raw in enumerate(raw_inputs):
        tensor = _object(raw, f"input {index}")
        name = _string(tensor.get("name"), f"input {index} 'name'")
        datatype = _string(tensor.get("datatype"), f"input {name!r} 'datatype'")
        shape = codec.checked_shape(name, tensor.get("shape"))
        tensor_parameters = _parameters(tensor.get("parameters"), f"input {name!r}")
        codec.charge(budget, name, datatype, shape)
        size = tensor_parameters.get(BINARY_SIZE)
        if size is None:
            if "data" not in tensor:
                raise InvalidArgument(f"input {name!r} has neither 'data' nor binary data")
            values = codec.from_json(name, datatype, shape, tensor["data"], may_hold_bools=may_hold_bools)
        else:
            if "data" in tensor:
                raise InvalidArgument(f"input {name!r} has both 'data' and binary data")
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} bytes of binary data left"
                )
            values = codec.from_raw(name, datatype, shape, bytes(binary[offset : offset + size]))
            offset += size
        inputs.append(InputTensor(name, datatype, values))
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data follow the last input")

    binary_outputs = _requested_outputs(doc.get("outputs", []))
    return RestInferRequest(
        request=InferRequest(
            model_name=model_name,
            model_version=model_version,
            inputs=inputs,
            id=request_id,
            outputs=list(binary_outputs),
            parameters=parameters,
        ),
        binary_outputs=binary_outputs,
        binary_default=bool(parameters.get(_BINARY_OUTPUTS, False)),
    )


def _binary(name: str, parsed: RestInferRequest) -> bool:
    """How an output goes back; an extension output (``probabilities:spread``) goes as its base."""
    for candidate in (name, name.split(":", 1)[0]):
        binary = parsed.binary_outputs.get(candidate)
        if binary is not None:
            return binary
    return parsed.binary_default


def format_infer_response(answer: InferAnswer, parsed: RestInferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows it (else None)."""
    outputs: list[dict[str, Any]] = []
    binaries: list[bytes] = []
    for output in answer.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.values.shape),
        }
        if _binary(output.name, parsed):
            raw = codec.to_raw(output.values)
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            binaries.append(raw)
        else:
            entry["data"] = codec.to_json(output.values)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.model_version}
    if answer.id:
        doc["id"] = answer.id
    if answer.parameters:
        doc["parameters"] = answer.parameters
    doc["outputs"] = outputs
    json_part = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binaries:
        return json_part, None
    return json_part + b"".join(binaries), len(json_part)
