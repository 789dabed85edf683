"""The protocol's tensor codec: JSON data, raw bytes and typed lists to numpy, and back."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from serving.errors import InvalidArgument
from serving.oip import codec
from serving.oip.datatypes import datatype_of, datatype_of_tf, numpy_dtype_of
from serving.protos import DataType


def test_nested_and_flat_data_give_the_same_tensor() -> None:
    nested = codec.from_json("x", "FP32", [2, 3], [[1, 2, 3], [4.5, 5, 6]])
    flat = codec.from_json("x", "FP32", [2, 3], [1, 2, 3, 4.5, 5, 6])
    assert nested.dtype == np.float32
    assert nested.shape == (2, 3)
    np.testing.assert_array_equal(nested, flat)
    np.testing.assert_array_equal(nested[1], [4.5, 5, 6])


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("UINT16", [0, 65535], np.array([0, 65535], np.uint16)),
        ("INT64", [2**62, -(2**62)], np.array([2**62, -(2**62)], np.int64)),
        ("FP64", [0.1, 2], np.array([0.1, 2.0])),
        ("FP16", [0.5, 2], np.array([0.5, 2.0], np.float16)),
        ("BOOL", [True, False], np.array([True, False])),
    ],
)
def test_each_datatype_reads_its_json_values(datatype: str, data: list[object], expected: np.ndarray) -> None:
    array = codec.from_json("x", datatype, [2], data)
    assert array.dtype == numpy_dtype_of(datatype, "x")
    np.testing.assert_array_equal(array, expected)


def test_bytes_data_are_utf8_strings() -> None:
    array = codec.from_json("island", "BYTES", [2, 1], [["Biscoe"], ["Dréam"]])
    assert array.dtype == object
    assert array.tolist() == [[b"Biscoe"], ["Dréam".encode()]]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2, 2], [1, 2, 3], "shape [2, 2] holds 4 values, the data has 3"),
        ("FP32", [2], [[1, 2], [3]], "ragged"),
        ("BYTES", [2], [["a"], ["b", "c"]], "ragged"),
        ("FP32", [2], ["1", "2"], "FP32 data must be numbers, got strings"),
        ("FP32", [2], [1.0, True], "FP32 data must be numbers, got booleans"),
        ("FP32", [2], [1.0, None], "FP32 data must be numbers, got null"),
        ("INT32", [2], [1, 2.5], "INT32 data must be integers, got fractions"),
        ("INT8", [1], [300], "value 300 is out of range for INT8"),
        ("INT64", [1], [2**70], "INT64 data must be numbers, got integers too large for 64 bits"),
        ("UINT8", [1], [-1], "value -1 is out of range for UINT8"),
        ("BOOL", [2], [1, 0], "BOOL data must be booleans, got numbers"),
        ("BYTES", [2], ["a", 1], "BYTES data must be strings, got numbers"),
        ("FP8", [1], [1], "datatype 'FP8', expected one of BOOL"),
        ("BF16", [1], [1], "datatype 'BF16'"),
    ],
)
def test_bad_json_data_is_one_clear_line(datatype: str, shape: list[int], data: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        codec.from_json("x", datatype, shape, data)


def test_bool_look_can_be_skipped_when_the_body_has_no_booleans() -> None:
    # The hint is only ever False when the body holds no "true"/"false": the values are numbers.
    array = codec.from_json("x", "FP32", [3], [1, 2, 3], may_hold_bools=False)
    np.testing.assert_array_equal(array, [1, 2, 3])


@pytest.mark.parametrize("shape", [[2, -1], "2", [2.0], [True], None])
def test_shape_must_be_non_negative_integers(shape: object) -> None:
    with pytest.raises(InvalidArgument, match="shape must be a list of non-negative integers"):
        codec.checked_shape("x", shape)


def test_empty_tensor() -> None:
    array = codec.from_json("x", "FP32", [0, 4], [])
    assert array.shape == (0, 4)
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        np.array([[1, -2]], dtype=np.int64),
        np.array([True, False, True]),
        np.array([0.25, -1], dtype=np.float16),
        np.array([[b"Adelie", b""], [b"Gentoo", b"\x00\xff"]], dtype=object),
    ],
)
def test_raw_bytes_round_trip(array: np.ndarray) -> None:
    raw = codec.to_raw(array)
    back = codec.from_raw("x", datatype_of(array.dtype), list(array.shape), raw)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_raw_numbers_are_little_endian_and_bytes_length_prefixed() -> None:
    assert codec.to_raw(np.array([1.0], np.float32)) == struct.pack("<f", 1.0)
    assert codec.to_raw(np.array([b"ab", b"c"], object)) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        ("FP32", [2], b"\x00" * 7, r"shape \[2\] of FP32 needs 8 bytes, got 7"),
        ("BYTES", [1], b"\x05\x00\x00\x00ab", "runs past the end"),
        ("BYTES", [1], b"\x05\x00", "inside an element's length prefix"),
        ("BYTES", [2], b"\x01\x00\x00\x00a", r"shape \[2\] holds 2 values, the data has 1"),
    ],
)
def test_bad_raw_bytes(datatype: str, shape: list[int], raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.from_raw("x", datatype, shape, raw)


def test_typed_values_count_and_narrow_ranges() -> None:
    np.testing.assert_array_equal(codec.from_values("x", "INT16", [2], [1, -2]), [1, -2])
    assert codec.from_values("s", "BYTES", [1], [b"a"]).tolist() == [b"a"]
    with pytest.raises(InvalidArgument, match="holds 3 values, the data has 2"):
        codec.from_values("x", "FP32", [3], [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="value 70000 is out of range for INT16"):
        codec.from_values("x", "INT16", [1], [70000])


def test_json_output_is_flat_row_major() -> None:
    out = codec.to_json(np.array([[1.5, 2], [3, 4]], np.float32))
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [1.5, 2.0, 3.0, 4.0]
    assert codec.to_json(np.array([[b"a"], [b"\xff"]], object)) == ["a", "\ufffd"]
    assert codec.to_json(np.array([0.5], np.float16)).dtype == np.float32


def test_datatypes_from_numpy_and_tensorflow() -> None:
    assert datatype_of(np.dtype(np.float32)) == "FP32"
    assert datatype_of(np.dtype("U3")) == "BYTES"
    assert datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of_tf(DataType.DT_STRING) == "BYTES"
    assert datatype_of_tf(DataType.DT_INT64) == "INT64"
    assert datatype_of_tf(DataType.DT_COMPLEX64) == "COMPLEX64"
    with pytest.raises(InvalidArgument, match="has no Open Inference Protocol datatype"):
        datatype_of(np.dtype(np.complex64))
