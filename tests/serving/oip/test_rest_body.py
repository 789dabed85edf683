"""The protocol's REST bodies: JSON requests and answers, with Triton's binary tensor data."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from serving.errors import InvalidArgument
from serving.oip.rest_body import format_infer_response, parse_infer_request
from serving.oip.service import InferAnswer, OutputTensor


def _parse(doc: dict[str, object], binary: bytes = b"", *, with_length: bool | None = None):
    json_part = orjson.dumps(doc)
    length = str(len(json_part)) if (binary or with_length) else None
    return parse_infer_request(json_part + binary, length, model_name="m", model_version="")


def test_json_request() -> None:
    parsed = _parse(
        {
            "id": "42",
            "model_name": "ignored, the URL names the model",
            "parameters": {"ensemble_detail": "spread"},
            "inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]},
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            ],
            "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": True}}],
        }
    )
    request = parsed.request
    assert (request.model_name, request.model_version, request.id) == ("m", "", "42")
    assert [(t.name, t.datatype, t.values.tolist()) for t in request.inputs] == [
        ("x", "FP32", [[1.0, 2.0]]),
        ("s", "BYTES", [b"a"]),
    ]
    assert request.outputs == ["y", "z"]
    assert request.parameters == {"ensemble_detail": "spread"}
    assert parsed.binary_outputs == {"y": None, "z": True}
    assert parsed.binary_default is False


def test_binary_tensor_data_follows_the_json_in_input_order() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    strings = b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    parsed = _parse(
        {
            "inputs": [
                {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 10}},
                {"name": "n", "shape": [1], "datatype": "INT64", "data": [7]},
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            ],
            "parameters": {"binary_data_output": True},
        },
        strings + x.tobytes(),
    )
    by_name = {t.name: t.values for t in parsed.request.inputs}
    assert by_name["s"].tolist() == [b"ab", b""]
    assert by_name["n"].tolist() == [7]
    np.testing.assert_array_equal(by_name["x"], x)
    assert parsed.binary_default is True


def _x(**fields: object) -> dict[str, object]:
    """A one-value FP32 input ``x``, with ``fields`` changed (None removes one)."""
    tensor: dict[str, object] = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    tensor.update(fields)
    return {key: value for key, value in tensor.items() if value is not None}


_BINARY_4 = {"binary_data_size": 4}


@pytest.mark.parametrize(
    ("doc", "binary", "message"),
    [
        ({"inputs": []}, b"", "'inputs' must be a non-empty list"),
        ({"inputs": [_x(data=None)]}, b"", "has neither 'data'"),
        ({"inputs": [_x(parameters=_BINARY_4)]}, b"\x00" * 4, "both 'data' and binary data"),
        ({"inputs": [_x(data=None, shape=[2], parameters={"binary_data_size": 8})]}, b"\x00" * 4,
         "binary_data_size 8 does not fit the 4 bytes"),
        ({"inputs": [_x(data=None, parameters=_BINARY_4)]}, b"\x00" * 6,
         "2 bytes of binary data follow the last input"),
        ({"inputs": [_x(datatype=3)]}, b"", "'datatype' must be a string"),
        ({"id": 5, "inputs": [_x()]}, b"", "'id' must"),
        ({"inputs": [_x()], "outputs": {}}, b"", "'outputs' must be a list"),
        ({"inputs": [_x()], "parameters": {"p": [1]}}, b"", "parameter 'p' must be a string, number or"),
        ({"inputs": [_x(parameters={"shared_memory_region": "r"})]}, b"",
         "'shared_memory_region' is not supported"),
        ({"inputs": [_x()], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}, b"",
         "'classification' is not supported"),
    ],
)  # fmt: skip
def test_malformed_requests(doc: dict[str, object], binary: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _parse(doc, binary, with_length=bool(binary))


@pytest.mark.parametrize(("body", "length"), [(b"{}", "9"), (b"{}", "two"), (b"{}", "-1")])
def test_header_length_must_fit_the_body(body: bytes, length: str) -> None:
    with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length"):
        parse_infer_request(body, length, model_name="m", model_version="")


def test_not_json_is_a_parse_error() -> None:
    with pytest.raises(InvalidArgument, match="JSON Parse error"):
        parse_infer_request(b"{nope", None, model_name="m", model_version="")


def _answer() -> InferAnswer:
    return InferAnswer(
        model_name="m",
        model_version="3",
        id="42",
        outputs=[
            OutputTensor("p", "FP32", np.array([[0.25, 0.75]], np.float32)),
            OutputTensor("p:spread", "FP32", np.array([[0.0, 0.5]], np.float32)),
            OutputTensor("label", "BYTES", np.array([b"yes"], object)),
        ],
        parameters={"ensemble_members": "2/3"},
        headers={"x-ensemble-members": "2/3"},
    )


def test_json_answer() -> None:
    parsed = _parse({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    body, json_length = format_infer_response(_answer(), parsed)
    assert json_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "42",
        "parameters": {"ensemble_members": "2/3"},
        "outputs": [
            {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]},
            {"name": "p:spread", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 0.5]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["yes"]},
        ],
    }


def test_binary_answer_for_the_outputs_that_ask_and_their_extension_outputs() -> None:
    parsed = _parse(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "p", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    body, json_length = format_infer_response(_answer(), parsed)
    assert json_length is not None
    doc = orjson.loads(body[:json_length])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in doc["outputs"]]
    assert sizes == [8, 8, None]
    assert doc["outputs"][2]["data"] == ["yes"]
    tail = body[json_length:]
    np.testing.assert_array_equal(np.frombuffer(tail[:8], "<f4"), [0.25, 0.75])
    np.testing.assert_array_equal(np.frombuffer(tail[8:], "<f4"), [0.0, 0.5])
