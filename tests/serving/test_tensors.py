"""numpy ↔ TensorProto and TF Serving's predict JSON, including its error messages."""

from __future__ import annotations

import base64
import json
import tracemalloc

import grpc
import numpy as np
import orjson
import pytest

from serving.core import TensorInfo
from serving.errors import InvalidArgument, NotFound, ServingError
from serving.protos import DataType, TensorProto
from serving.tensors import (
    data_type,
    decode_inputs,
    decoded_nbytes,
    format_predict_response,
    from_tensor_proto,
    numpy_dtype,
    parse_predict_request,
    shape_proto,
    to_tensor_proto,
)

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
           np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]  # fmt: skip


def _random_array(rng: np.random.Generator, dtype: type) -> np.ndarray:
    shape = tuple(int(n) for n in rng.integers(0, 4, size=rng.integers(0, 4)))
    if np.dtype(dtype).kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = rng.normal(size=shape) * 10.0 ** rng.integers(-5, 5)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.normal(size=shape)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_numeric_round_trip_through_tensor_content(dtype: type) -> None:
    rng = np.random.default_rng(abs(hash(np.dtype(dtype).name)) % 2**32)
    for _ in range(20):
        array = _random_array(rng, dtype)
        proto = TensorProto.FromString(to_tensor_proto(array).SerializeToString())
        assert proto.tensor_content or array.size == 0
        back = from_tensor_proto(proto)
        assert back.dtype == array.dtype
        assert back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_tensor_content_is_little_endian_whatever_the_input_byte_order() -> None:
    big = np.array([1.5, -2.0], dtype=">f4")
    proto = to_tensor_proto(big)
    assert proto.tensor_content == np.array([1.5, -2.0], dtype="<f4").tobytes()
    assert proto.dtype == DataType.DT_FLOAT


def test_strings_round_trip_as_bytes() -> None:
    array = np.array([["a", "é"], ["", "xyz"]])
    proto = to_tensor_proto(array)
    assert proto.dtype == DataType.DT_STRING
    assert list(proto.string_val) == [b"a", "é".encode(), b"", b"xyz"]
    back = from_tensor_proto(proto)
    assert back.dtype == object
    assert back.tolist() == [[b"a", "é".encode()], [b"", b"xyz"]]


@pytest.mark.parametrize(
    ("dtype_enum", "field", "values", "expected"),
    [
        (DataType.DT_FLOAT, "float_val", [1.5, 2.5, 3.5, 4.5], [[1.5, 2.5], [3.5, 4.5]]),
        (DataType.DT_DOUBLE, "double_val", [0.125], [[0.125, 0.125], [0.125, 0.125]]),
        (DataType.DT_INT32, "int_val", [7], [[7, 7], [7, 7]]),
        (DataType.DT_INT8, "int_val", [-3, 4, 5, 6], [[-3, 4], [5, 6]]),
        (DataType.DT_INT64, "int64_val", [2**40, 1, 2, 3], [[2**40, 1], [2, 3]]),
        (DataType.DT_BOOL, "bool_val", [True], [[True, True], [True, True]]),
        (DataType.DT_UINT64, "uint64_val", [2**63, 0, 1, 2], [[2**63, 0], [1, 2]]),
        (DataType.DT_INT32, "int_val", [], [[0, 0], [0, 0]]),
        (DataType.DT_FLOAT, "float_val", [1.0, 2.0], [[1.0, 2.0], [2.0, 2.0]]),
    ],
)
def test_typed_fields_are_read_with_tensorflows_fill_rule(dtype_enum, field, values, expected) -> None:
    proto = TensorProto(dtype=dtype_enum, tensor_shape=shape_proto([2, 2]))
    getattr(proto, field).extend(values)
    array = from_tensor_proto(proto)
    assert array.dtype == numpy_dtype(dtype_enum)
    assert array.tolist() == expected


def test_half_val_holds_float16_bit_patterns() -> None:
    halves = np.array([1.5, -0.25, 65504.0], dtype=np.float16)
    proto = TensorProto(dtype=DataType.DT_HALF, tensor_shape=shape_proto([3]))
    proto.half_val.extend(halves.view(np.uint16).astype(int).tolist())
    np.testing.assert_array_equal(from_tensor_proto(proto), halves)


def test_bfloat16_reads_as_float32() -> None:
    proto = to_tensor_proto(np.array([1.5, -2.0], dtype=np.float32), data_type_override=DataType.DT_BFLOAT16)
    assert proto.dtype == DataType.DT_BFLOAT16
    assert from_tensor_proto(proto).tolist() == [1.5, -2.0]


def test_string_val_single_value_fills_the_shape() -> None:
    proto = TensorProto(dtype=DataType.DT_STRING, tensor_shape=shape_proto([3]), string_val=[b"x"])
    assert from_tensor_proto(proto).tolist() == [b"x", b"x", b"x"]


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (
            TensorProto(dtype=DataType.DT_FLOAT, tensor_shape=shape_proto([3]), tensor_content=b"\0" * 8),
            "needs 12",
        ),
        (TensorProto(dtype=DataType.DT_FLOAT, tensor_shape=shape_proto([-1])), "not fully defined"),
        (TensorProto(dtype=DataType.DT_INT32, tensor_shape=shape_proto([1]), int_val=[1, 2]), "holds 1"),
        (TensorProto(dtype=DataType.DT_RESOURCE, tensor_shape=shape_proto([1])), "resource"),
    ],
)
def test_bad_tensor_protos_are_clear_errors(proto: TensorProto, message: str) -> None:
    with pytest.raises(ServingError, match=message):
        from_tensor_proto(proto)


def test_dtype_mapping_both_ways() -> None:
    for dtype in NUMERIC:
        assert numpy_dtype(data_type(np.dtype(dtype))) == np.dtype(dtype)
    assert data_type(np.dtype("U3")) == DataType.DT_STRING
    assert data_type(np.dtype(object)) == DataType.DT_STRING
    with pytest.raises(InvalidArgument):
        data_type(np.dtype("datetime64[s]"))


# --------------------------------------------------------------------------- JSON requests

TWO_INPUTS = {
    "age": TensorInfo(np.dtype(np.float32), (-1,)),
    "tokens": TensorInfo(np.dtype(np.int64), (-1, 2)),
}
ONE_INPUT = {"x": TensorInfo(np.dtype(np.float32), (-1, 2))}
STRINGS = {"text": TensorInfo(np.dtype(object), (-1,))}


def _parse(body: str | bytes, infos=TWO_INPUTS):
    seen: list[str] = []

    def lookup(signature_name: str):
        seen.append(signature_name)
        return infos

    parsed = parse_predict_request(body.encode() if isinstance(body, str) else body, lookup)
    return parsed, seen


def test_row_format_with_named_inputs_is_typed_by_the_signature() -> None:
    parsed, seen = _parse(
        '{"signature_name": "s", "instances": [{"age": 3, "tokens": [1, 2]}, {"age": 4.5, "tokens": [3, 4]}]}'
    )
    assert seen == ["s"]
    assert not parsed.columnar
    assert parsed.signature_name == "s"
    assert parsed.inputs["age"].dtype == np.float32
    assert parsed.inputs["age"].tolist() == [3.0, 4.5]
    assert parsed.inputs["tokens"].dtype == np.int64
    assert parsed.inputs["tokens"].tolist() == [[1, 2], [3, 4]]


def test_columnar_format_and_single_unnamed_input() -> None:
    parsed, _ = _parse('{"inputs": {"age": [1], "tokens": [[5, 6]]}}')
    assert parsed.columnar
    assert parsed.inputs["tokens"].shape == (1, 2)
    parsed, _ = _parse('{"inputs": [[1, 2], [3, 4]]}', ONE_INPUT)
    assert parsed.inputs["x"].dtype == np.float32
    assert parsed.inputs["x"].shape == (2, 2)
    parsed, _ = _parse('{"instances": [[1, 2]]}', ONE_INPUT)
    assert parsed.inputs["x"].tolist() == [[1.0, 2.0]]
    parsed, _ = _parse('{"inputs": 2.5}', ONE_INPUT)
    assert parsed.inputs["x"].shape == ()


def test_nan_and_infinity_tokens_are_accepted() -> None:
    parsed, _ = _parse('{"instances": [[NaN, Infinity], [-Infinity, 1]]}', ONE_INPUT)
    values = parsed.inputs["x"]
    assert np.isnan(values[0, 0])
    assert values[0, 1] == np.inf
    assert values[1, 0] == -np.inf


def test_b64_values_decode_to_bytes() -> None:
    encoded = base64.b64encode(b"\x00\xffbin").decode()
    parsed, _ = _parse(f'{{"instances": [{{"b64": "{encoded}"}}, "plain"]}}', STRINGS)
    assert parsed.inputs["text"].tolist() == [b"\x00\xffbin", b"plain"]


@pytest.mark.parametrize(
    ("body", "infos", "message"),
    [
        ("", TWO_INPUTS, "JSON Parse error: The document is empty"),
        ("{", TWO_INPUTS, "JSON Parse error: "),
        ("[1]", TWO_INPUTS, "JSON Value: [1] Is not object"),
        ('{"signature_name": 5, "inputs": [1]}', ONE_INPUT, "'signature_name' key must be a string value."),
        (
            '{"instances": [[1, 2]], "inputs": [[1, 2]]}',
            ONE_INPUT,
            "expecting only one of 'inputs' or 'instances'",
        ),
        ('{"instances": {"x": 1}}', ONE_INPUT, "Excepting 'instances' to be an list/array"),
        ('{"instances": []}', ONE_INPUT, "No values in 'instances' array"),
        ('{"foo": 1}', ONE_INPUT, "Missing 'inputs' or 'instances' key"),
        (
            '{"instances": [[1, 2], [3]]}',
            ONE_INPUT,
            "Failed to process element: 1 of 'instances' list. "
            "Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1",
        ),
        ('{"instances": [[[1, 2]], [3, 4]]}', ONE_INPUT, "Expecting shape [1,2] but got: [2]"),
        (
            '{"inputs": [[1, 2], [3]]}',
            ONE_INPUT,
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (
            '{"inputs": [[1, 2], 3]}',
            ONE_INPUT,
            "found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        (
            '{"instances": [["a", 2]]}',
            ONE_INPUT,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (
            '{"instances": [[true, 2]]}',
            ONE_INPUT,
            "JSON Value: true Type: True is not of expected type: float",
        ),
        (
            '{"instances": [[null, 2]]}',
            ONE_INPUT,
            "JSON Value: null Type: Null is not of expected type: float",
        ),
        (
            '{"instances": [[16777217, 2]]}',
            ONE_INPUT,
            "Cannot convert JSON value: 16777217 to float without loss of precision.",
        ),
        ('{"instances": [[1e39, 2]]}', ONE_INPUT, "to float without loss of precision."),
        (
            '{"instances": [{"age": 1, "tokens": [1.5, 2]}]}',
            TWO_INPUTS,
            "Failed to process element: 0 key: tokens of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON Value: 1.5 Type: Number is not of expected type: int64",
        ),
        ('{"instances": [1, 2]}', TWO_INPUTS, "instances is a plain list, but expecting list of objects"),
        ('{"instances": [{"age": 1}]}', TWO_INPUTS, "keys must be equal to: age,tokens"),
        ('{"instances": [{"age": 1, "tokens": [1, 2], "x": 1}]}', TWO_INPUTS, "does not have named input: x"),
        (
            '{"instances": [{"age": 1, "tokens": [1, 2]}, [1]]}',
            TWO_INPUTS,
            "Expecting object but got list at item 1",
        ),
        ('{"inputs": [1, 2]}', TWO_INPUTS, "inputs is a plain value/list, but expecting an object"),
        ('{"inputs": {"age": [1]}}', TWO_INPUTS, "Missing named input: tokens in 'inputs' object."),
        ('{"instances": [{"b64": "%%%"}]}', STRINGS, "Unable to base64 decode"),
        ('{"inputs": [{"b64": "aa==", "x": 1}]}', STRINGS, "not formatted correctly for base64 data"),
        ('{"instances": [{"b64": "aa==", "x": 1}]}', STRINGS, "does not have named input: b64"),
        ('{"instances": [1]}', STRINGS, "JSON Value: 1 Type: Number is not of expected type: string"),
        (
            '{"instances": [[2147483648, 1]]}',
            {"x": TensorInfo(np.dtype(np.int32), (-1, 2))},
            "is not of expected type: int32",
        ),
    ],
)
def test_bad_bodies_get_tf_servings_messages(body: str, infos, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _parse(body, infos)
    assert message in str(caught.value)
    assert caught.value.http_status == 400
    assert "\n" not in str(caught.value)


def test_signature_lookup_errors_propagate() -> None:
    def lookup(name: str):
        raise NotFound("Servable not found for request: Latest(m)")

    with pytest.raises(NotFound):
        parse_predict_request(b'{"instances": [1]}', lookup)


def test_fast_and_checked_paths_agree() -> None:
    rng = np.random.default_rng(7)
    infos = {"x": TensorInfo(np.dtype(np.float32), (-1, 3)), "n": TensorInfo(np.dtype(np.int32), (-1,))}
    for _ in range(30):
        rows = int(rng.integers(1, 6))
        x = rng.normal(size=(rows, 3)).astype(np.float32)
        n = rng.integers(-1000, 1000, size=rows)
        instances = [{"x": x[i].tolist(), "n": int(n[i])} for i in range(rows)]
        fast = parse_predict_request(json.dumps({"instances": instances}).encode(), lambda _: infos).inputs
        # A "true" inside an unrelated string forces the value-by-value path.
        checked = parse_predict_request(
            json.dumps({"instances": instances, "note": "true"}).encode(), lambda _: infos
        ).inputs
        for name in infos:
            assert fast[name].dtype == checked[name].dtype == infos[name].dtype
            np.testing.assert_array_equal(fast[name], checked[name])
        np.testing.assert_array_equal(fast["x"], x)


# --------------------------------------------------------------------------- JSON responses


def test_single_output_row_and_columnar() -> None:
    probabilities = np.array([[0.1, 0.9], [0.25, 0.75]], dtype=np.float32)
    row = json.loads(format_predict_response({"probabilities": probabilities}, columnar=False))
    assert row == {"predictions": [[0.1, 0.9], [0.25, 0.75]]}
    columnar = json.loads(format_predict_response({"probabilities": probabilities}, columnar=True))
    assert columnar == {"outputs": [[0.1, 0.9], [0.25, 0.75]]}


def test_float32_values_are_written_in_their_shortest_form() -> None:
    body = format_predict_response({"p": np.array([0.1, 0.2], dtype=np.float32)}, columnar=True)
    assert body == b'{"outputs":[0.1,0.2]}'


def test_several_outputs() -> None:
    outputs = {"probabilities": np.array([[0.5, 0.5], [1.0, 0.0]], np.float32), "label": np.array([0, 1])}
    row = json.loads(format_predict_response(outputs, columnar=False))
    assert row == {
        "predictions": [{"probabilities": [0.5, 0.5], "label": 0}, {"probabilities": [1.0, 0.0], "label": 1}]
    }
    columnar = json.loads(format_predict_response(outputs, columnar=True))
    assert columnar == {"outputs": {"probabilities": [[0.5, 0.5], [1.0, 0.0]], "label": [0, 1]}}


def test_bytes_outputs_are_b64_and_strings_are_text() -> None:
    outputs = {"image_bytes": np.array([b"\x00\x01"], dtype=object), "name": np.array([b"cat"], dtype=object)}
    body = json.loads(format_predict_response(outputs, columnar=True))
    assert body == {"outputs": {"image_bytes": [{"b64": "AAE="}], "name": ["cat"]}}


def test_non_finite_values_are_bare_tokens() -> None:
    body = format_predict_response({"p": np.array([np.nan, np.inf, -np.inf, 0.1], np.float32)}, columnar=True)
    assert body == b'{"outputs":[NaN,Infinity,-Infinity,0.1]}'


def test_empty_batch_and_bad_outputs() -> None:
    assert (
        format_predict_response({"p": np.zeros((0, 3), np.float32)}, columnar=False) == b'{"predictions":[]}'
    )
    with pytest.raises(InvalidArgument, match="inconsistent batch size: 1 expecting: 2"):
        format_predict_response({"a": np.zeros(2), "b": np.zeros(1)}, columnar=False)
    with pytest.raises(InvalidArgument, match="has no shape information"):
        format_predict_response({"a": np.array(1.0, np.float32)}, columnar=False)
    with pytest.raises(InvalidArgument, match="empty tensor map"):
        format_predict_response({}, columnar=False)


def test_error_code_is_invalid_argument() -> None:
    with pytest.raises(ServingError) as caught:
        _parse("{")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- hostile input

FLOAT_X = {"x": TensorInfo(np.dtype(np.float32), (-1, 64))}


def _broadcast(shape: list[int], dtype: int = DataType.DT_FLOAT) -> TensorProto:
    """TF's fill form: one value that the declared shape repeats, a few dozen bytes on the wire."""
    proto = TensorProto(dtype=dtype, tensor_shape=shape_proto(shape))  # type: ignore[arg-type]
    if dtype == DataType.DT_STRING:
        proto.string_val.append(b"abc")
    else:
        proto.float_val.append(1.0)
    return proto


def test_a_small_message_declaring_a_huge_shape_is_refused_before_anything_is_allocated() -> None:
    proto = _broadcast([2**20, 64])
    assert proto.ByteSize() < 50
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument) as caught:
            decode_inputs({"x": proto}, FLOAT_X, max_bytes=64 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the 256 MiB the shape declares was never allocated
    assert str(caught.value) == (
        "tensor parsing error: x: shape [1048576, 64] of float decodes to 268435456 bytes, "
        "more than the 67108864 bytes one request may decode to"
    )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_bound_covers_all_inputs_of_a_request_together() -> None:
    infos = {"a": TensorInfo(np.dtype(np.float32), (-1,)), "b": TensorInfo(np.dtype(np.float32), (-1,))}
    half = {"a": _broadcast([100]), "b": _broadcast([100])}
    assert decode_inputs(half, infos, max_bytes=800)["b"].tolist() == [1.0] * 100
    with pytest.raises(InvalidArgument, match="with the inputs before it, 800 bytes, more than the 799"):
        decode_inputs(half, infos, max_bytes=799)


def test_strings_are_bounded_by_their_bytes_and_references() -> None:
    infos = {"s": TensorInfo(np.dtype(object), (-1,))}
    proto = _broadcast([10], DataType.DT_STRING)
    # References, the given value (at most the tensor's size on the wire), the repeats of it.
    size = 10 * 8 + proto.ByteSize() + 9 * 3
    assert decoded_nbytes(proto, (10,)) == size
    assert decode_inputs({"s": proto}, infos, max_bytes=size)["s"].tolist() == [b"abc"] * 10
    with pytest.raises(InvalidArgument, match="tensor parsing error: s"):
        decode_inputs({"s": proto}, infos, max_bytes=size - 1)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 2**40], "decodes to 4398046511104 bytes"),
        ([2**31, 2**31], "Shape [2147483648, 2147483648] of float is more than 2**63 - 1 bytes"),
        ([0, 2**31, 2**31], "of float is more than 2**63 - 1 bytes"),
        ([2**62, 2**62], "would have more than 2**63 - 1 elements"),
        ([0, 2**62, 2**62], "would have more than 2**63 - 1 elements"),
        ([1] * 70, "70 dimensions, at most 64"),
        ([1] * 300, "300 dimensions, at most 64"),
    ],
)
def test_shapes_tensorflow_cannot_hold_are_invalid_arguments(shape: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_inputs({"x": _broadcast(shape)}, FLOAT_X, max_bytes=2**26)
    assert str(caught.value).startswith("tensor parsing error: x: ")
    assert message in str(caught.value)


def test_bfloat16_is_refused_for_a_float_input_and_checked_for_length() -> None:
    bf16 = to_tensor_proto(np.array([1.5, -2.0], np.float32), data_type_override=DataType.DT_BFLOAT16)
    with pytest.raises(InvalidArgument, match=r"Expects arg\[x\] to be float but bfloat16 is provided"):
        decode_inputs({"x": bf16}, FLOAT_X, max_bytes=None)
    odd = TensorProto(dtype=DataType.DT_BFLOAT16, tensor_shape=shape_proto([2]), tensor_content=b"\0" * 3)
    bf16_input = {"x": TensorInfo(np.dtype(np.float32), (-1,))}
    with pytest.raises(InvalidArgument, match="tensor parsing error: y: tensor_content has 3 bytes"):
        decode_inputs({"y": odd}, bf16_input, max_bytes=None)
    with pytest.raises(
        InvalidArgument, match="tensor_content has 3 bytes, shape \\[2\\] of bfloat16 needs 4"
    ):
        from_tensor_proto(odd)


def test_an_unknown_dtype_for_an_unknown_input_is_an_invalid_argument() -> None:
    proto = TensorProto(dtype=12345, tensor_shape=shape_proto([1]))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="tensor parsing error: z: Tensor type"):
        decode_inputs({"z": proto}, FLOAT_X, max_bytes=None)


def test_good_tensors_decode_unchanged_within_the_bound() -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    decoded = decode_inputs({"x": to_tensor_proto(x)}, FLOAT_X, max_bytes=x.nbytes)
    np.testing.assert_array_equal(decoded["x"], x)


def test_json_bodies_are_bounded_by_the_shape_of_their_lists_before_conversion() -> None:
    # A bool input makes the count before parsing lenient (1 byte a value); the float64 input's
    # lists are then charged at their real size before numpy converts them.
    infos = {"x": TensorInfo(np.dtype(np.float64), (-1, 64)), "flag": TensorInfo(np.dtype(np.bool_), (-1,))}
    row = b'{"flag": true, "x": [' + b",".join([b"0"] * 64) + b"]}"
    body = b'{"instances": [' + b",".join([row] * 10) + b"]}"
    parsed = parse_predict_request(body, lambda _: infos, max_bytes=5130)
    assert parsed.inputs["x"].shape == (10, 64)
    with pytest.raises(InvalidArgument, match="tensor parsing error: x: shape \\[10, 64\\] of double"):
        parse_predict_request(body, lambda _: infos, max_bytes=5129)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"instances": [[1e309, 2]]}', "JSON Parse error: number is infinity when parsed as double"),
        ('{"instances": [[NaN, 1e309]]}', "JSON Parse error: Number too big to be stored in double"),
        ('{"instances": [[1, 2]], "signature_name": "\\ud800"}', "JSON Parse error: no low surrogate"),
        ('{"instances": [[NaN, 2]], "signature_name": "\\ud800"}', "The surrogate pair in string is invalid"),
        ('{"instances": [["\\udc00", 2]]}', "JSON Parse error: "),
        (
            '{"instances": [[NaN, 2]], "s": "\\udc00"}',
            "The surrogate pair in string is invalid. at offset: 32",
        ),
        ('{"instances": [[NaN, 2]], "\\ud800": 1}', "The surrogate pair in string is invalid"),
        ('{"instances": [[NaN, 2]], "s": "\\ud800\\ud800"}', "The surrogate pair in string is invalid"),
        ("\ufeff\ufeff{}", "JSON Parse error: "),
    ],
)
def test_json_tf_servings_parser_refuses_is_refused(body: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _parse(body.encode("utf-8", "surrogatepass"), ONE_INPUT)
    assert message in str(caught.value)
    orjson.dumps({"error": str(caught.value)})  # the message itself can always be written


def test_json_body_in_another_encoding_is_refused() -> None:
    for encoding in ("utf-16", "utf-32"):
        with pytest.raises(InvalidArgument, match="JSON Parse error"):
            _parse('{"instances": [[1, 2]]}'.encode(encoding), ONE_INPUT)


def test_json_edge_cases_tf_servings_parser_accepts_are_accepted() -> None:
    # RapidJSON's UTF-8 stream skips a byte order mark; a surrogate pair is one character; an
    # escaped backslash before "ud800" is text; an integer beyond 64 bits is read as a double.
    parsed, _ = _parse(b'\xef\xbb\xbf{"instances": [[1, 2]]}', ONE_INPUT)
    assert parsed.inputs["x"].tolist() == [[1.0, 2.0]]
    for text in ("\\ud83d\\ude00", "\\\\ud800", "\\\\\\ud83d\\ude00"):
        for nan in ("1", "NaN"):
            body = f'{{"instances": [[{nan}, 2]], "tag": "{text}"}}'
            assert _parse(body, ONE_INPUT)[0].inputs["x"].shape == (1, 2)
    big = "1" + "0" * 5000
    with pytest.raises(InvalidArgument, match="Number too big"):
        _parse(f'{{"instances": [[NaN, {big}]]}}', ONE_INPUT)
    with pytest.raises(InvalidArgument, match="without loss of precision"):
        _parse(f'{{"instances": [[NaN, {big[:40]}]]}}', ONE_INPUT)


@pytest.mark.parametrize("depth", [65, 200, 990, 5000])
def test_lists_nested_deeper_than_a_tensor_can_be_are_invalid(depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    for body in (
        f'{{"instances": {nested}}}',
        f'{{"inputs": {nested}}}',
        f'{{"instances": [{{"age": 1, "tokens": {nested}}}]}}',
        f'{{"instances": [{{"age": 1, "tokens": [1, 2]}}, {{"age": 1, "tokens": {nested}}}]}}',
    ):
        with pytest.raises(InvalidArgument) as caught:
            _parse(body, TWO_INPUTS if "age" in body else ONE_INPUT)
        assert caught.value.http_status == 400


def test_depth_64_is_still_a_tensor() -> None:
    nested = "[" * 64 + "1" + "]" * 64
    parsed, _ = _parse(f'{{"inputs": {nested}}}', ONE_INPUT)
    assert parsed.inputs["x"].ndim == 64


def test_a_body_holding_too_many_values_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = b",".join([b"[1.5, 2.5, 3.5, 4.5]"] * 1000)
    body = b'{"instances": [' + rows + b"]}"
    infos = {"x": TensorInfo(np.dtype(np.float32), (-1, 4))}
    assert parse_predict_request(body, lambda _: infos, max_bytes=16_000).inputs["x"].shape == (1000, 4)

    def no_parsing(_: bytes) -> None:
        raise AssertionError("parsed a body that was already too large")

    monkeypatch.setattr("serving.tensors.json_request.load_json", no_parsing)
    with pytest.raises(InvalidArgument) as caught:
        parse_predict_request(body, lambda _: infos, max_bytes=15_999)
    assert str(caught.value) == (
        "The request body holds 4000 values, 16000 bytes or more decoded, "
        "more than the 15999 bytes one request may decode to"
    )


@pytest.mark.parametrize(
    ("text", "values"),
    [
        (b'{"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}', 8),
        (b'{"instances": [{"a": 1, "b": "x, y, z"}], "signature_name": "s"}', 3),
        (b'{"a": [], "b": [ ], "c": {}, "d": [[1]]}', 1),
        (b'{"a": "ends in a backslash \\\\", "b": "quoted \\", comma"}', 2),
        (b"7", 1),
    ],
)
def test_values_are_counted_on_the_bytes_outside_strings(text: bytes, values: int) -> None:
    from serving.tensors.json_request import _json_value_count

    assert _json_value_count(text) == values
