"""A generated corpus of hostile predict requests, as an attacker would try them; seeded, repeatable.

Each corpus starts from one valid request for a model and its inputs and mixes three kinds of case:

- a catalogue of the known attacks (fill-form shapes of gigabytes, shapes no tensor can have, 65 to
  5000 levels of nesting, lone surrogates, other encodings, numbers beyond a double, dtypes that
  do not exist, addresses with non-ASCII digits or empty labels, bytes that are no message);
- random JSON values and random TensorProtos put where the valid request has its values;
- random byte mutations of the valid body or message.

The same for the Open Inference Protocol's ``infer`` (REST ``/v2/models/NAME/infer``, with and
without binary tensor data, and gRPC ``ModelInfer``): declared shapes of gigabytes with a few
bytes of data, shapes no tensor can have, datatypes that do not exist, data that does not fit its
datatype or shape, malformed binary data and parameters, random values and byte mutations.

The gateway tests and the local backend tests send the same corpus to a real server and check that
every case is answered without a 5xx / INTERNAL and in TF Serving's error shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from serving.protos import DataType, PredictRequest, TensorProto
from serving.protos.inference.open_inference_grpc_pb2 import ModelInferRequest
from serving.tensors import shape_proto


@dataclass(frozen=True)
class Input:
    """One input of the model under test: name, ``float32`` or ``string``, and the per-row shape."""

    name: str
    dtype: str
    row_shape: tuple[int, ...]

    def row(self, rng: random.Random) -> Any:
        def value() -> Any:
            return rng.choice(["red", "blue"]) if self.dtype == "string" else round(rng.uniform(-2, 2), 3)

        def nested(shape: tuple[int, ...]) -> Any:
            return value() if not shape else [nested(shape[1:]) for _ in range(shape[0])]

        return nested(self.row_shape)


@dataclass(frozen=True)
class RestCase:
    label: str
    path: str
    body: bytes


@dataclass(frozen=True)
class GrpcCase:
    label: str
    request: bytes
    """A serialized PredictRequest, or bytes that are not one."""


def valid_rest_body(inputs: list[Input], rows: int = 2, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    instances = [{spec.name: spec.row(rng) for spec in inputs} for _ in range(rows)]
    return json.dumps({"instances": instances}).encode()


def valid_grpc_request(model: str, inputs: list[Input], rows: int = 2, seed: int = 0) -> PredictRequest:
    rng = random.Random(seed)
    request = PredictRequest()
    request.model_spec.name = model
    for spec in inputs:
        shape = [rows, *spec.row_shape]
        tensor = request.inputs[spec.name]
        tensor.tensor_shape.CopyFrom(shape_proto(shape))
        count = 1
        for size in shape:
            count *= size
        if spec.dtype == "string":
            tensor.dtype = DataType.DT_STRING  # type: ignore[assignment]
            tensor.string_val.extend(rng.choice([b"red", b"blue"]) for _ in range(count))
        else:
            tensor.dtype = DataType.DT_FLOAT  # type: ignore[assignment]
            tensor.float_val.extend(rng.uniform(-2, 2) for _ in range(count))
    return request


# --------------------------------------------------------------------------- REST


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str", "b64"] + (["list", "dict"] if depth < 5 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 2**24 + 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1])
    if kind == "float":
        return rng.choice([0.5, -1e38, 3.5e38, 1e300, 5e-324, -0.0])
    if kind == "str":
        return rng.choice(["", "red", "x" * 300, "\u00e9\u4e2d\U0001f600", '\n\t"\\', "NaN", "1e309"])
    if kind == "b64":
        return {"b64": rng.choice(["cmVk", "%%%", "", "cmVk===="])}
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(["b64", "x", "instances", ""]): _random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 2))
    }


def _catalogue_bodies(inputs: list[Input]) -> list[tuple[str, bytes]]:
    good = json.loads(valid_rest_body(inputs))
    first = inputs[0].name
    record = good["instances"][0]
    text = json.dumps(good)
    cases: list[tuple[str, str | bytes]] = [
        ("empty", b""),
        ("spaces", b"  \n "),
        ("not an object", "[1, 2]"),
        ("a string", '"instances"'),
        ("truncated", text[: len(text) // 2]),
        ("trailing text", text + " trailing"),
        ("both keys", json.dumps({"instances": good["instances"], "inputs": {}})),
        ("neither key", json.dumps({"signature_name": "serving_default"})),
        ("signature_name number", json.dumps({**good, "signature_name": 5})),
        ("signature_name unknown", json.dumps({**good, "signature_name": "nope"})),
        ("instances object", json.dumps({"instances": record})),
        ("instances empty", json.dumps({"instances": []})),
        ("instances of empty lists", json.dumps({"instances": [[]]})),
        ("instances null", json.dumps({"instances": None})),
        ("unknown input", json.dumps({"instances": [{**record, "nope": 1}]})),
        ("missing input", json.dumps({"instances": [{k: v for k, v in record.items() if k != first}]})),
        ("inputs missing one", json.dumps({"inputs": {}})),
        ("ragged", json.dumps({"instances": [record, {**record, first: [record[first]] * 3}]})),
        ("duplicate key", text[:-1] + ', "instances": 7}'),
        ("NaN and Infinity", text.replace("0.", "NaN, 0.", 1) if "0." in text else text),
        ("1e309", json.dumps({"instances": [{**record, first: 1.0}]}).replace("1.0", "1e309")),
        (
            "-1e309 with NaN",
            json.dumps({"instances": [{**record, first: 1.0}]}).replace("1.0", "-1e309") + "NaN",
        ),
        ("huge integer", json.dumps({"instances": [{**record, first: 1.0}]}).replace("1.0", "9" * 5000)),
        ("lone surrogate value", text.replace('"red"', '"\\ud800"').replace('"blue"', '"\\udc00"')),
        ("lone surrogate in name", json.dumps({"instances": [{"\ud800": 1}]})),
        ("lone surrogate signature", json.dumps({**good, "signature_name": "\udbff"})),
        ("lone surrogate with NaN", '{"instances": [NaN], "signature_name": "\\ud800"}'),
        ("utf-8 BOM", b"\xef\xbb\xbf" + text.encode()),
        ("utf-16", text.encode("utf-16")),
        ("utf-32", text.encode("utf-32")),
        ("latin-1", text.replace("red", "r\u00e9d").encode("latin-1")),
        ("control characters", text.replace("red", "r\\u0000\\u0007d")),
        ("b64 junk", json.dumps({"instances": [{**record, first: {"b64": "%%%"}}]})),
        ("b64 with extra key", json.dumps({"instances": [{**record, first: {"b64": "cmVk", "x": 1}}]})),
        ("bools", json.dumps({"instances": [{**record, first: True}]})),
        ("nulls", json.dumps({"instances": [{**record, first: None}]})),
        ("long string", json.dumps({"instances": [{**record, first: "x" * 100_000}]})),
        ("many instances", json.dumps({"instances": [record] * 2000})),
        ("zero-size inner list", json.dumps({"inputs": {name: [[]] for name in record}})),
    ]
    for depth in (63, 64, 65, 200, 990, 1100, 5000):
        cases.append((f"instances nested {depth}", f'{{"instances": {_nested(depth)}}}'))
        cases.append((f"inputs nested {depth}", f'{{"inputs": {_nested(depth)}}}'))
        nested_record = json.dumps({"instances": [{**record, first: "DEEP"}]}).replace(
            '"DEEP"', _nested(depth)
        )
        cases.append((f"value nested {depth} in a record", nested_record))
    return [
        (label, body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
        for label, body in cases
    ]


def _mutated(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(data) + 1)
        action = rng.choice(["flip", "insert", "delete", "cut"])
        if action == "flip" and where < len(data):
            data[where] ^= 1 << rng.randrange(8)
        elif action == "insert":
            data[where:where] = rng.choice(
                [b"[", b"]", b"{", b"}", b",", b'"', b"\\", b"\xff", b"\x00", b"NaN", b"1e999"]
            )
        elif action == "delete" and where < len(data):
            del data[where]
        elif action == "cut":
            del data[where:]
    return bytes(data)


def _paths(model: str) -> list[tuple[str, str]]:
    return [
        ("non-ASCII digit version", f"/v1/models/{model}/versions/%D9%A1:predict"),
        ("fullwidth digit version", f"/v1/models/{model}/versions/%EF%BC%91:predict"),
        ("huge version", f"/v1/models/{model}/versions/{'9' * 40}:predict"),
        ("negative version", f"/v1/models/{model}/versions/-1:predict"),
        ("empty label", f"/v1/models/{model}/labels/:predict"),
        ("unknown label", f"/v1/models/{model}/labels/nope:predict"),
        ("label with surrogate escape", f"/v1/models/{model}/labels/%ED%A0%80:predict"),
        ("unknown verb", f"/v1/models/{model}:explode"),
        ("unknown model", "/v1/models/nope:predict"),
        ("long name", f"/v1/models/{'m' * 5000}:predict"),
        ("dot segments", f"/v1/models/../{model}:predict"),
        ("metadata POST", f"/v1/models/{model}/metadata"),
        ("no model", "/v1/models/:predict"),
        ("percent junk", f"/v1/models/{model}%00:predict"),
    ]


def rest_cases(model: str, inputs: list[Input], random_count: int = 200, seed: int = 16) -> list[RestCase]:
    """The catalogue, every hostile path, and ``random_count`` random bodies (half structural)."""
    rng = random.Random(seed)
    predict = f"/v1/models/{model}:predict"
    good = valid_rest_body(inputs)
    cases = [RestCase(label, predict, body) for label, body in _catalogue_bodies(inputs)]
    cases += [RestCase(label, path, good) for label, path in _paths(model)]
    doc = json.loads(good)
    for index in range(random_count):
        if index % 2:
            cases.append(RestCase(f"mutated body {index}", predict, _mutated(good, rng)))
            continue
        spec = rng.choice(inputs)
        value = _random_json(rng)
        body: dict[str, Any]
        if rng.random() < 0.5:
            instances = [dict(row) for row in doc["instances"]]
            instances[rng.randrange(len(instances))][spec.name] = value
            body = {"instances": instances}
        else:
            columns = {name: [row[name] for row in doc["instances"]] for name in doc["instances"][0]}
            columns[spec.name] = value
            body = {"inputs": columns}
        cases.append(RestCase(f"random value {index}", predict, json.dumps(body).encode()))
    return cases


# --------------------------------------------------------------------------- gRPC

_DIMS = [0, 1, 2, 3, -1, -(2**63), 2**31, 2**40, 2**62, 2**63 - 1]


def _fill(shape: list[int], dtype: int = DataType.DT_FLOAT, **fields: Any) -> TensorProto:
    tensor = TensorProto(dtype=dtype, tensor_shape=shape_proto(shape), **fields)  # type: ignore[arg-type]
    if not fields:
        if dtype == DataType.DT_STRING:
            tensor.string_val.append(b"red")
        else:
            tensor.float_val.append(1.0)
    return tensor


def _catalogue_tensors(inputs: list[Input]) -> list[tuple[str, dict[str, TensorProto]]]:
    first = inputs[0]
    first_dtype = DataType.DT_STRING if first.dtype == "string" else DataType.DT_FLOAT
    unknown_rank = TensorProto(dtype=first_dtype)
    unknown_rank.tensor_shape.unknown_rank = True
    row = list(first.row_shape)
    cases: list[tuple[str, TensorProto]] = [
        ("fill form [300000, 64]", _fill([300_000, 64], first_dtype)),
        ("fill form [2^20, 64]", _fill([2**20, 64], first_dtype)),
        ("shape [1, 2^40]", _fill([1, 2**40], first_dtype)),
        ("shape [2^31, 2^31]", _fill([2**31, 2**31], first_dtype)),
        ("shape [2^62, 2^62]", _fill([2**62, 2**62], first_dtype)),
        ("shape [0, 2^62, 2^62]", _fill([0, 2**62, 2**62], first_dtype)),
        ("70 dimensions", _fill([1] * 70, first_dtype)),
        ("300 dimensions", _fill([1] * 300, first_dtype)),
        ("unknown rank", unknown_rank),
        ("negative dimension", _fill([-1, *row], first_dtype)),
        ("zero rows", _fill([0, *row], first_dtype)),
        ("scalar", _fill([], first_dtype)),
        ("bfloat16 of the wrong length", _fill([2, *row], DataType.DT_BFLOAT16, tensor_content=b"\x00" * 3)),
        ("bfloat16 for a float input", _fill([2, *row], DataType.DT_BFLOAT16, half_val=[16256, 16256])),
        ("content of the wrong length", _fill([2, *row], DataType.DT_FLOAT, tensor_content=b"\x00" * 7)),
        ("too many values", _fill([1], DataType.DT_FLOAT, float_val=[1.0, 2.0, 3.0])),
        ("strings for floats", _fill([2, *row], DataType.DT_STRING)),
        ("doubles for floats", _fill([2, *row], DataType.DT_DOUBLE, double_val=[1.0])),
        ("complex of odd parts", _fill([2], DataType.DT_COMPLEX64, scomplex_val=[1.0, 2.0, 3.0])),
    ]
    cases += [(f"dtype {value}", _fill([2, *row], value)) for value in [0, *range(5, 31), 101, 9999]]
    return [(label, {first.name: tensor}) for label, tensor in cases]


def _random_tensor(rng: random.Random) -> TensorProto:
    dtype = rng.choice([*range(0, 24), 101, 9999])
    shape = [rng.choice(_DIMS) for _ in range(rng.choice([0, 1, 2, 2, 3, 5, 65]))]
    tensor = TensorProto(dtype=dtype, tensor_shape=shape_proto(shape))  # type: ignore[arg-type]
    field = rng.choice(["tensor_content", "float_val", "int_val", "string_val", "half_val", "none"])
    count = rng.choice([0, 1, 2, 3, 7, 100])
    if field == "tensor_content":
        tensor.tensor_content = rng.randbytes(count)
    elif field == "float_val":
        tensor.float_val.extend(rng.uniform(-1e38, 1e38) for _ in range(count))
    elif field == "int_val":
        tensor.int_val.extend(rng.randint(-(2**31), 2**31 - 1) for _ in range(count))
    elif field == "string_val":
        tensor.string_val.extend(rng.randbytes(rng.randint(0, 9)) for _ in range(count))
    elif field == "half_val":
        tensor.half_val.extend(rng.randint(0, 65535) for _ in range(count))
    return tensor


def grpc_cases(model: str, inputs: list[Input], random_count: int = 120, seed: int = 16) -> list[GrpcCase]:
    """The catalogue, hostile model specs and output filters, random tensors and corrupt bytes."""
    rng = random.Random(seed)
    good = valid_grpc_request(model, inputs)
    cases: list[GrpcCase] = []

    def add(label: str, request: PredictRequest) -> None:
        cases.append(GrpcCase(label, request.SerializeToString()))

    for label, tensors in _catalogue_tensors(inputs):
        request = PredictRequest()
        request.CopyFrom(good)
        for name, tensor in tensors.items():
            request.inputs[name].CopyFrom(tensor)
        add(label, request)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("empty model name", {"name": ""}),
        ("unknown model", {"name": "nope"}),
        ("empty version label", {"version_label": ""}),
        ("unknown version label", {"version_label": "nope"}),
        ("negative version", {"version": -1}),
        ("huge version", {"version": 2**63 - 1}),
        ("unknown signature", {"signature_name": "nope"}),
    ]
    for label, fields in specs:
        request = PredictRequest()
        request.CopyFrom(good)
        if "version" in fields:
            request.model_spec.version.value = fields.pop("version")
        for key, value in fields.items():
            setattr(request.model_spec, key, value)
        add(label, request)
    for label, names in [
        ("duplicate output_filter", ["probabilities", "probabilities"]),
        ("unknown output_filter", ["nope"]),
        ("empty output_filter name", [""]),
    ]:
        request = PredictRequest()
        request.CopyFrom(good)
        request.output_filter.extend(names)
        add(label, request)
    no_inputs = PredictRequest()
    no_inputs.CopyFrom(good)
    no_inputs.ClearField("inputs")
    add("no inputs", no_inputs)
    extra = PredictRequest()
    extra.CopyFrom(good)
    extra.inputs["nope"].CopyFrom(_fill([2]))
    add("extra input", extra)
    names = [spec.name for spec in inputs]
    for index in range(random_count):
        request = PredictRequest()
        request.CopyFrom(good)
        request.inputs[rng.choice([*names, "nope"])].CopyFrom(_random_tensor(rng))
        add(f"random tensor {index}", request)
    raw = good.SerializeToString()
    for index in range(random_count // 3):
        cases.append(GrpcCase(f"corrupt bytes {index}", _mutated(raw, rng)))
    cases.append(GrpcCase("bad UTF-8 in the model name", b"\x0a\x05\x0a\x03\xff\xfe\xfd"))
    return cases


# --------------------------------------------------------------------------- Open Inference Protocol

_OIP_DATATYPES = {"float32": "FP32", "string": "BYTES"}


@dataclass(frozen=True)
class OipRestCase:
    label: str
    path: str
    body: bytes
    headers: dict[str, str]


def valid_oip_tensors(inputs: list[Input], rows: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """The JSON input tensors of a valid ``infer`` body, values nested in their shape."""
    rng = random.Random(seed)
    return [
        {
            "name": spec.name,
            "datatype": _OIP_DATATYPES[spec.dtype],
            "shape": [rows, *spec.row_shape],
            "data": [spec.row(rng) for _ in range(rows)],
        }
        for spec in inputs
    ]


def valid_oip_rest_body(inputs: list[Input], rows: int = 2, seed: int = 0) -> bytes:
    return json.dumps({"id": "fuzz", "inputs": valid_oip_tensors(inputs, rows, seed)}).encode()


def _oip_catalogue(inputs: list[Input]) -> list[tuple[str, list[dict[str, Any]], bytes]]:
    """Hostile input tensor lists (JSON part) and the binary data that follows them, if any."""
    good = valid_oip_tensors(inputs)
    first = good[0]
    rest = good[1:]

    def with_first(**fields: Any) -> list[dict[str, Any]]:
        tensor = {key: value for key, value in first.items() if fields.get(key, "") is not None}
        tensor.update({key: value for key, value in fields.items() if value is not None})
        return [tensor, *rest]

    def binary(shape: list[int], size: int, datatype: str = "FP32") -> list[dict[str, Any]]:
        tensor = {
            "name": first["name"],
            "datatype": datatype,
            "shape": shape,
            "parameters": {"binary_data_size": size},
        }
        return [tensor, *rest]

    return [
        ("declared [300000, 64], one value", with_first(shape=[300_000, 64], data=[1.0]), b""),
        ("declared [2^20, 64], one value", with_first(shape=[2**20, 64], data=[1.0]), b""),
        ("declared [1, 2^40]", with_first(shape=[1, 2**40], data=[1.0]), b""),
        ("declared [2^31, 2^31]", with_first(shape=[2**31, 2**31], data=[1.0]), b""),
        ("declared [2^62, 2^62]", with_first(shape=[2**62, 2**62], data=[1.0]), b""),
        ("declared [0, 2^62, 2^62]", with_first(shape=[0, 2**62, 2**62], data=[]), b""),
        ("declared 2^63 elements", with_first(shape=[2**63], data=[1.0]), b""),
        ("70 dimensions", with_first(shape=[1] * 70, data=[1.0]), b""),
        ("negative dimension", with_first(shape=[-1, 4], data=[1.0]), b""),
        ("fractional dimension", with_first(shape=[1.5, 4], data=[1.0]), b""),
        ("shape a string", with_first(shape="[2, 4]"), b""),
        ("shape missing", with_first(shape=None), b""),
        ("datatype unknown", with_first(datatype="FP128"), b""),
        ("datatype lower case", with_first(datatype="fp32"), b""),
        ("datatype a number", with_first(datatype=11), b""),
        ("name missing", with_first(name=None), b""),
        ("name a list", with_first(name=["x"]), b""),
        ("data missing", with_first(data=None), b""),
        ("data too short", with_first(data=[1.0]), b""),
        ("data strings", with_first(data=[["red"] * len(first["data"][0])] * len(first["data"])), b""),
        ("data booleans", with_first(data=[[True] * len(first["data"][0])] * len(first["data"])), b""),
        ("data ragged", with_first(data=[[1.0], [1.0, 2.0]]), b""),
        ("data nested 65", with_first(data=json.loads(_nested(65))), b""),
        ("BOOL datatype for numbers", with_first(datatype="BOOL"), b""),
        ("INT8 out of range", with_first(datatype="INT8", shape=[1], data=[300]), b""),
        ("UINT64 negative", with_first(datatype="UINT64", shape=[1], data=[-1]), b""),
        ("INT64 beyond 64 bits", with_first(datatype="INT64", shape=[1], data=[2**70]), b""),
        ("binary [2^40] in 4 bytes", binary([2**40], 4), b"\x00" * 4),
        ("binary [2^20, 64] in 4 bytes", binary([2**20, 64], 4), b"\x00" * 4),
        ("binary of the wrong length", binary([2, 4], 7), b"\x00" * 7),
        ("binary size past the end", binary([2, 4], 32), b"\x00" * 8),
        ("binary size negative", binary([2, 4], -1), b""),
        ("binary size a string", binary([2, 4], "32"), b"\x00" * 32),  # type: ignore[arg-type]
        ("binary BYTES cut in a prefix", binary([1], 2, "BYTES"), b"\x05\x00"),
        ("binary BYTES element past the end", binary([1], 6, "BYTES"), b"\xff\xff\x00\x00ab"),
        ("data and binary both", [{**first, "parameters": {"binary_data_size": 4}}, *rest], b"\x00" * 4),
        ("shared memory", with_first(parameters={"shared_memory_region": "r"}), b""),
        ("parameters a list", with_first(parameters=[1]), b""),
        ("unknown input", [*good, {**first, "name": "nope"}], b""),
        ("duplicate input", [*good, first], b""),
    ]


def oip_rest_cases(
    model: str, inputs: list[Input], random_count: int = 120, seed: int = 16
) -> list[OipRestCase]:
    """The catalogue, hostile bodies and headers, random values and mutations for REST ``infer``."""
    rng = random.Random(seed)
    infer = f"/v2/models/{model}/infer"
    good = valid_oip_rest_body(inputs)
    json_only: dict[str, str] = {"content-type": "application/json"}
    cases: list[OipRestCase] = []
    for label, tensors, data in _oip_catalogue(inputs):
        part = json.dumps({"id": "fuzz", "inputs": tensors}).encode()
        headers = dict(json_only)
        if data or any("binary_data_size" in (t.get("parameters") or {}) for t in tensors):
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(part)),
            }
        cases.append(OipRestCase(label, infer, part + data, headers))
    text = good.decode()
    bodies: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("not an object", b"[1, 2]"),
        ("inputs missing", b'{"id": "x"}'),
        ("inputs empty", b'{"inputs": []}'),
        ("inputs an object", b'{"inputs": {"x": [1]}}'),
        ("id a number", text.replace('"fuzz"', "5").encode()),
        ("outputs an object", text[:-1].encode() + b', "outputs": {"name": "probabilities"}}'),
        ("output without a name", text[:-1].encode() + b', "outputs": [{}]}'),
        ("truncated", good[: len(good) // 2]),
        ("lone surrogate name", text.replace('"name": "', '"name": "\\ud800', 1).encode()),
        ("utf-16", text.encode("utf-16")),
        ("1e309", text.replace("0.", "1e309, 0.", 1).encode()),
        ("inputs nested 990", b'{"inputs": ' + _nested(990).encode() + b"}"),
    ]
    cases += [OipRestCase(label, infer, body, json_only) for label, body in bodies]
    for label, length in [
        ("header length abc", "abc"),
        ("header length past the end", "999999"),
        ("header length -1", "-1"),
    ]:
        cases.append(OipRestCase(label, infer, good, {"inference-header-content-length": length}))
    for label, path in [
        ("non-ASCII digit version", f"/v2/models/{model}/versions/%D9%A1/infer"),
        ("unknown model", "/v2/models/nope/infer"),
        ("unknown version", f"/v2/models/{model}/versions/nope/infer"),
        ("long name", f"/v2/models/{'m' * 5000}/infer"),
    ]:
        cases.append(OipRestCase(label, path, good, json_only))
    doc = json.loads(good)
    for index in range(random_count):
        if index % 2:
            cases.append(OipRestCase(f"mutated body {index}", infer, _mutated(good, rng), json_only))
            continue
        tensors = [dict(tensor) for tensor in doc["inputs"]]
        tensor = rng.choice(tensors)
        tensor[rng.choice(["data", "shape", "datatype", "name", "parameters"])] = _random_json(rng)
        cases.append(
            OipRestCase(f"random field {index}", infer, json.dumps({"inputs": tensors}).encode(), json_only)
        )
    return cases


def valid_oip_grpc_request(
    model: str, inputs: list[Input], rows: int = 2, seed: int = 0
) -> ModelInferRequest:
    request = ModelInferRequest(model_name=model, id="fuzz")
    for tensor in valid_oip_tensors(inputs, rows, seed):
        added = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        flat = _flatten(tensor["data"])
        if tensor["datatype"] == "BYTES":
            added.contents.bytes_contents.extend(value.encode() for value in flat)
        else:
            added.contents.fp32_contents.extend(flat)
    return request


def _flatten(data: Any) -> list[Any]:
    return [leaf for item in data for leaf in _flatten(item)] if isinstance(data, list) else [data]


def oip_grpc_cases(model: str, inputs: list[Input], random_count: int = 80, seed: int = 16) -> list[GrpcCase]:
    """Hostile ``ModelInfer`` requests: declared shapes, datatypes, contents, raw data, corrupt bytes."""
    rng = random.Random(seed)
    good = valid_oip_grpc_request(model, inputs)
    cases: list[GrpcCase] = []

    def variant(label: str, change: Any) -> None:
        request = ModelInferRequest()
        request.CopyFrom(good)
        change(request)
        cases.append(GrpcCase(label, request.SerializeToString()))

    def shape(dims: list[int], values: int = 1) -> Any:
        def change(request: ModelInferRequest) -> None:
            tensor = request.inputs[0]
            del tensor.shape[:]
            tensor.shape.extend(dims)
            tensor.ClearField("contents")
            tensor.contents.fp32_contents.extend([1.0] * values)

        return change

    for label, dims in [
        ("declared [300000, 64], one value", [300_000, 64]),
        ("declared [2^20, 64], one value", [2**20, 64]),
        ("declared [1, 2^40]", [1, 2**40]),
        ("declared [2^31, 2^31]", [2**31, 2**31]),
        ("declared [2^62, 2^62]", [2**62, 2**62]),
        ("declared [0, 2^62, 2^62]", [0, 2**62, 2**62]),
        ("negative dimension", [-1, 4]),
        ("70 dimensions", [1] * 70),
        ("300 dimensions", [1] * 300),
    ]:
        variant(label, shape(dims))

    def raw(dims: list[int], data: bytes, datatype: str = "FP32") -> Any:
        def change(request: ModelInferRequest) -> None:
            for tensor in request.inputs:
                tensor.ClearField("contents")
            request.inputs[0].datatype = datatype
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(dims)
            request.raw_input_contents.extend([data] + [b"\x00" * 32] * (len(request.inputs) - 1))

        return change

    variant("raw [2^40] in 4 bytes", raw([2**40], b"\x00" * 4))
    variant("raw [2^20, 64] in 4 bytes", raw([2**20, 64], b"\x00" * 4))
    variant("raw of the wrong length", raw([2, 4], b"\x00" * 7))
    variant("raw BYTES cut in a prefix", raw([1], b"\x05\x00", "BYTES"))
    variant("raw for some inputs only", lambda r: r.raw_input_contents.extend([b"\x00" * 4] * 5))
    for datatype in ["", "FP128", "fp32", "BF16", "BYTES", "BOOL", "INT8"]:
        variant(f"datatype {datatype!r}", lambda r, d=datatype: setattr(r.inputs[0], "datatype", d))
    variant("wrong contents field", lambda r: r.inputs[0].contents.int_contents.extend([1, 2]))
    variant("too many values", lambda r: r.inputs[0].contents.fp32_contents.extend([1.0] * 9))
    variant("empty model name", lambda r: setattr(r, "model_name", ""))
    variant("unknown model", lambda r: setattr(r, "model_name", "nope"))
    variant("unknown version", lambda r: setattr(r, "model_version", "nope"))
    variant("non-ASCII digit version", lambda r: setattr(r, "model_version", "\u0661"))
    variant("no inputs", lambda r: r.ClearField("inputs"))
    variant(
        "classification output",
        lambda r: r.outputs.add(name="probabilities").parameters["classification"].int64_param,
    )
    for index in range(random_count):

        def randomly(request: ModelInferRequest) -> None:
            tensor = request.inputs[0]
            del tensor.shape[:]
            tensor.shape.extend(
                rng.choice(_DIMS[:3] + _DIMS[6:]) for _ in range(rng.choice([0, 1, 2, 3, 65]))
            )
            tensor.datatype = rng.choice(["FP32", "FP64", "INT32", "BYTES", "BOOL", "FP16", "nope"])
            tensor.ClearField("contents")
            field = rng.choice(["fp32_contents", "int_contents", "bytes_contents", "bool_contents", "none"])
            count = rng.choice([0, 1, 2, 7, 100])
            if field == "fp32_contents":
                tensor.contents.fp32_contents.extend(rng.uniform(-1e38, 1e38) for _ in range(count))
            elif field == "int_contents":
                tensor.contents.int_contents.extend(rng.randint(-(2**31), 2**31 - 1) for _ in range(count))
            elif field == "bytes_contents":
                tensor.contents.bytes_contents.extend(rng.randbytes(3) for _ in range(count))
            elif field == "bool_contents":
                tensor.contents.bool_contents.extend(rng.random() < 0.5 for _ in range(count))

        variant(f"random tensor {index}", randomly)
    serialized = good.SerializeToString()
    for index in range(random_count // 3):
        cases.append(GrpcCase(f"corrupt bytes {index}", _mutated(serialized, rng)))
    return cases
