"""The protocol's REST routes and gRPC servicer on a recording core: conversions, versions, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.core import ModelMetadata, ModelRef, PredictResult, TensorInfo, VersionStatus
from serving.errors import InvalidArgument, NotFound
from serving.grpc.oip import add_oip_servicer
from serving.oip.service import OipService
from serving.protos import DataType, SignatureDefMap
from serving.protos.inference.open_inference_grpc_pb2 import (
    ModelInferRequest,
    ModelMetadataRequest,
    ModelReadyRequest,
    ServerLiveRequest,
    ServerMetadataRequest,
    ServerReadyRequest,
)
from serving.protos.inference.open_inference_grpc_pb2_grpc import GRPCInferenceServiceStub
from serving.rest import create_tfs_router, install_error_handlers
from serving.rest.oip import create_oip_router
from serving.testing import free_port

STRING = np.dtype(object)


class FakeCore:
    """Model ``m``: ``y = 2 x`` and ``label = s``; version 3 (label ``champion``) serves, 2 failed."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _check(self, ref: ModelRef) -> None:
        if ref.name == "broken":
            raise RuntimeError("secret internals")
        if ref.name not in ("m", "loading", "unsigned"):
            raise NotFound(f"Servable not found for request: Latest({ref.name})")
        if ref.label not in (None, "champion") or ref.version not in (None, 2, 3):
            raise NotFound(f"Servable not found for request: {ref}")

    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        self._check(ref)
        return {"x": TensorInfo(np.dtype(np.float32), (-1, 2)), "s": TensorInfo(STRING, (-1, 1))}

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        *,
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
        request_headers: Mapping[str, str] | None = None,
    ) -> PredictResult:
        self._check(ref)
        headers = dict(request_headers or {})
        self.calls.append(
            {"ref": ref, "inputs": dict(inputs), "filter": list(output_filter), "headers": headers}
        )
        outputs = {"y": inputs["x"] * 2, "label": inputs["s"].reshape(-1)}
        for name in output_filter:
            if name not in outputs:
                raise InvalidArgument(f"unknown output {name!r}")
        chosen = {name: outputs[name] for name in (output_filter or outputs)}
        if headers.get("x-ensemble-detail") == "spread" and "y" in chosen:
            chosen["y:spread"] = np.zeros_like(chosen["y"])
        return PredictResult(chosen, ref.name, 3, headers={"x-ensemble-members": "2/3", "x-other": "1"})

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        self._check(ref)
        signatures = SignatureDefMap()
        signature = signatures.signature_def["serving_default" if ref.name != "unsigned" else "other"]
        for key, dtype, dims in (("x", DataType.DT_FLOAT, (-1, 2)), ("s", DataType.DT_STRING, (-1, 1))):
            signature.inputs[key].dtype = dtype
            for size in dims:
                signature.inputs[key].tensor_shape.dim.add().size = size
        signature.outputs["y"].dtype = DataType.DT_FLOAT
        signature.outputs["y"].tensor_shape.unknown_rank = True
        signatures.signature_def["__saved_model_init_op"].outputs["init"].dtype = DataType.DT_INVALID
        return ModelMetadata(ref.name, 3, signatures)

    async def status(self, ref: ModelRef) -> list[VersionStatus]:
        self._check(ref)
        if ref.name == "loading":
            return [VersionStatus(1, "LOADING")]
        if ref.version == 2:
            return [VersionStatus(2, "END", "UNKNOWN", "failed to load")]
        if ref.version or ref.label:
            return [VersionStatus(3, "AVAILABLE")]
        return [VersionStatus(3, "AVAILABLE"), VersionStatus(2, "END", "UNKNOWN", "failed to load")]


class Readiness:
    def __init__(self) -> None:
        self.ready = True

    async def __call__(self) -> tuple[bool, str]:
        return (True, "ready") if self.ready else (False, "quorum not available")


def _service() -> tuple[OipService, FakeCore, Readiness]:
    core, readiness = FakeCore(), Readiness()
    return OipService(core, server_name="test server", platform="ensemble", ready=readiness), core, readiness


@pytest.fixture
def rest() -> tuple[TestClient, FakeCore, Readiness]:
    service, core, readiness = _service()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_tfs_router(core))
    app.include_router(create_oip_router(service, timeout_s=2.0))
    return TestClient(app, raise_server_exceptions=False), core, readiness


def _infer_body(**extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]},
        ],
        **extra,
    }


def test_rest_health_and_server_metadata(rest) -> None:
    client, _, readiness = rest
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    readiness.ready = False
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "error": "quorum not available"}
    metadata = client.get("/v2").json()
    assert metadata["name"] == "test server"
    assert metadata["extensions"] == ["binary_tensor_data", "parameters"]
    assert metadata["version"]


def test_rest_model_metadata_and_readiness(rest) -> None:
    client, _, _ = rest
    assert client.get("/v2/models/m").json() == {
        "name": "m",
        "versions": ["3"],
        "platform": "ensemble",
        "inputs": [
            {"name": "s", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }
    assert client.get("/v2/models/m/versions/champion").json()["name"] == "m"
    unsigned = client.get("/v2/models/unsigned")
    assert unsigned.status_code == 400
    assert unsigned.json() == {"error": 'model unsigned has no "serving_default" signature'}
    assert client.get("/v2/models/m/versions/champion/ready").json() == {"name": "m", "ready": True}
    assert client.get("/v2/models/m/versions/3/ready").status_code == 200
    not_ready = client.get("/v2/models/m/versions/2/ready")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"error": "model m is not ready (version 2 END)"}
    assert client.get("/v2/models/loading/ready").status_code == 503
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/models/m/versions/9/ready").status_code == 404


def test_rest_infer_converts_to_the_core_call_and_back(rest) -> None:
    client, core, _ = rest
    response = client.post(
        "/v2/models/m/versions/champion/infer",
        content=orjson.dumps(
            _infer_body(id="req-1", parameters={"ensemble_detail": "spread"}, outputs=[{"name": "y"}])
        ),
        headers={"X-Trace": "abc"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-ensemble-members"] == "2/3"
    assert response.json() == {
        "model_name": "m",
        "model_version": "3",
        "id": "req-1",
        "parameters": {"ensemble_members": "2/3"},
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 8.0]},
            {"name": "y:spread", "datatype": "FP32", "shape": [2, 2], "data": [0.0, 0.0, 0.0, 0.0]},
        ],
    }
    call = core.calls[-1]
    assert call["ref"] == ModelRef("m", None, "champion")
    assert call["filter"] == ["y"]
    assert call["headers"]["x-ensemble-detail"] == "spread"
    assert call["headers"]["x-trace"] == "abc"
    assert call["inputs"]["s"].tolist() == [[b"a"], [b"b"]]

    client.post("/v2/models/m/versions/3/infer", content=orjson.dumps(_infer_body()))
    assert core.calls[-1]["ref"] == ModelRef("m", 3)
    client.post("/v2/models/m/infer", content=orjson.dumps(_infer_body()))
    assert core.calls[-1]["ref"] == ModelRef("m")


def test_rest_infer_with_binary_tensor_data(rest) -> None:
    client, core, _ = rest
    x = np.array([[0.5, 1.5]], np.float32)
    doc = {
        "inputs": [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "s", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}},
        ],
        "parameters": {"binary_data_output": True},
    }
    json_part = orjson.dumps(doc)
    response = client.post(
        "/v2/models/m/infer",
        content=json_part + x.tobytes() + b"\x01\x00\x00\x00z",
        headers={"Inference-Header-Content-Length": str(len(json_part))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    answer = orjson.loads(response.content[:length])
    assert [o["parameters"]["binary_data_size"] for o in answer["outputs"]] == [8, 5]
    np.testing.assert_array_equal(np.frombuffer(response.content[length : length + 8], "<f4"), [1.0, 3.0])
    assert response.content[length + 8 :] == b"\x01\x00\x00\x00z"
    np.testing.assert_array_equal(core.calls[-1]["inputs"]["x"], x)


@pytest.mark.parametrize(
    ("path", "doc", "status", "message"),
    [
        ("/v2/models/m/infer",
         {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]},
         400, "input 'x' has datatype FP64, the model expects FP32"),
        ("/v2/models/m/infer",
         {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["1", "2"]}]},
         400, "input 'x' has datatype BYTES, the model expects FP32"),
        ("/v2/models/m/infer",
         {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2]}]},
         400, "tensor 'x': shape [2, 2] holds 4 values, the data has 2"),
        ("/v2/models/m/infer", _infer_body(outputs=[{"name": "nope"}]), 400, "unknown output 'nope'"),
        ("/v2/models/m/infer",
         {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}] * 2},
         400, "input 'x' is given more than once"),
        ("/v2/models/nope/infer", _infer_body(), 404, "Servable not found"),
        ("/v2/models/m/versions/9/infer", _infer_body(), 404, "Servable not found"),
        ("/v2/models/broken/infer", _infer_body(), 500, "Internal error: RuntimeError"),
        ("/v2/models/m/infer", "not json", 400, "JSON Parse error"),
    ],
)  # fmt: skip
def test_rest_infer_errors(rest, path: str, doc: Any, status: int, message: str) -> None:
    client, _, _ = rest
    content = doc.encode() if isinstance(doc, str) else orjson.dumps(doc)
    response = client.post(path, content=content)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert "secret internals" not in response.text


def test_rest_unknown_routes_and_methods(rest) -> None:
    client, _, _ = rest
    assert client.get("/v2/models/m/config").status_code == 404
    assert client.get("/v2/models/m/infer").status_code == 405
    assert client.get("/v2/repository/index").json() == {"error": "Not Found"}


def test_kserve_v1_courtesies(rest) -> None:
    client, _, _ = rest
    assert client.get("/").json() == {"status": "alive"}
    status = client.get("/v1/models/m").json()
    assert status["name"] == "m"
    assert status["ready"] is True
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE", "END"]
    assert client.get("/v1/models/m/versions/2").json()["ready"] is False
    assert client.get("/v1/models/loading").json()["ready"] is False


def test_grpc_servicer() -> None:
    async def scenario() -> None:
        service, core, readiness = _service()
        server = grpc.aio.server()
        add_oip_servicer(server, service)
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = GRPCInferenceServiceStub(channel)
                assert (await stub.ServerLive(ServerLiveRequest(), timeout=5)).live
                assert (await stub.ServerReady(ServerReadyRequest(), timeout=5)).ready
                readiness.ready = False
                assert not (await stub.ServerReady(ServerReadyRequest(), timeout=5)).ready
                meta = await stub.ServerMetadata(ServerMetadataRequest(), timeout=5)
                assert meta.name == "test server"
                assert list(meta.extensions) == ["binary_tensor_data", "parameters"]
                ready = stub.ModelReady
                assert (await ready(ModelReadyRequest(name="m", version="champion"), timeout=5)).ready
                assert not (await ready(ModelReadyRequest(name="m", version="2"), timeout=5)).ready
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await ready(ModelReadyRequest(name="nope"), timeout=5)
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
                model = await stub.ModelMetadata(ModelMetadataRequest(name="m"), timeout=5)
                assert (model.name, list(model.versions), model.platform) == ("m", ["3"], "ensemble")
                assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
                    ("s", "BYTES", [-1, 1]),
                    ("x", "FP32", [-1, 2]),
                ]

                # Raw contents, as tritonclient and the KServe SDK send numpy data.
                request = ModelInferRequest(model_name="m", model_version="champion", id="r1")
                request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
                request.inputs.add(name="s", datatype="BYTES", shape=[1, 1])
                request.raw_input_contents.extend(
                    [np.array([1.5, 2], np.float32).tobytes(), b"\x02\x00\x00\x00hi"]
                )
                request.parameters["ensemble_detail"].string_param = "spread"
                request.outputs.add(name="y")
                call = stub.ModelInfer(request, timeout=5, metadata=(("x-trace", "abc"),))
                response = await call
                assert (response.model_name, response.model_version, response.id) == ("m", "3", "r1")
                assert response.parameters["ensemble_members"].string_param == "2/3"
                assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
                    ("y", "FP32", [1, 2]),
                    ("y:spread", "FP32", [1, 2]),
                ]
                np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), [3, 4])
                assert ("x-ensemble-members", "2/3") in tuple(await call.trailing_metadata())
                recorded = core.calls[-1]
                assert recorded["ref"] == ModelRef("m", None, "champion")
                assert recorded["inputs"]["s"].tolist() == [[b"hi"]]
                assert recorded["headers"]["x-ensemble-detail"] == "spread"
                assert recorded["headers"]["x-trace"] == "abc"

                # Typed contents; BYTES outputs come back raw and length-prefixed.
                typed = ModelInferRequest(model_name="m", model_version="3")
                x = typed.inputs.add(name="x", datatype="FP32", shape=[1, 2])
                x.contents.fp32_contents.extend([1, 2])
                s = typed.inputs.add(name="s", datatype="BYTES", shape=[1, 1])
                s.contents.bytes_contents.append(b"ok")
                answer = await stub.ModelInfer(typed, timeout=5)
                assert [o.name for o in answer.outputs] == ["y", "label"]
                assert answer.raw_output_contents[1] == b"\x02\x00\x00\x00ok"
                assert core.calls[-1]["ref"] == ModelRef("m", 3)

                bad = ModelInferRequest()
                bad.CopyFrom(typed)
                bad.inputs[0].contents.ClearField("fp32_contents")
                bad.inputs[0].contents.bytes_contents.append(b"1")
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                              "input 'x' of datatype FP32 has values in bytes_contents")  # fmt: skip
                bad.inputs[0].datatype = "FP16"
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                              "input 'x': FP16 values travel only in raw_input_contents")  # fmt: skip
                bad.inputs[0].datatype = "FP8"
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                              "tensor 'x' has datatype 'FP8', expected one of BOOL")  # fmt: skip
                bad.CopyFrom(request)
                bad.raw_input_contents.pop()
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                              "raw_input_contents has 1 entries for 2 inputs")  # fmt: skip
                bad.CopyFrom(request)
                bad.inputs[0].datatype = "BYTES"
                bad.raw_input_contents[0] = b"\x01\x00\x00\x001\x01\x00\x00\x002"
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                              "input 'x' has datatype BYTES, the model expects FP32")  # fmt: skip
                bad.CopyFrom(request)
                bad.model_name = "nope"
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.NOT_FOUND, "Servable not")
                bad.model_name = "broken"
                await _expect(stub.ModelInfer(bad, timeout=5), grpc.StatusCode.INTERNAL, "RuntimeError")
                await _expect(
                    channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")(b"", timeout=5),
                    grpc.StatusCode.UNIMPLEMENTED,
                    "",
                )
        finally:
            await server.stop(None)

    asyncio.run(scenario())


async def _expect(call: Any, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
    assert "secret" not in (caught.value.details() or "")
