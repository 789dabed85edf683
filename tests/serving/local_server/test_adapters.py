"""The shared REST and gRPC adapters on a recording core: conversions, headers, deadlines, errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.core import ModelMetadata, ModelRef, PredictResult, TensorInfo, VersionStatus
from serving.errors import NotFound, ResourceExhausted
from serving.grpc import DecodeGuard, add_health_and_reflection, add_tfs_servicers
from serving.protos import (
    DataType,
    GetModelMetadataRequest,
    GetModelStatusRequest,
    ModelServiceStub,
    ModelVersionStatus,
    PredictionServiceStub,
    PredictRequest,
    ReloadConfigRequest,
    SignatureDefMap,
    TensorProto,
)
from serving.rest import create_tfs_router, install_error_handlers
from serving.tensors import from_tensor_proto, shape_proto, to_tensor_proto
from serving.testing import free_port
from tests.conftest import raw_http


class RecordingCore:
    """Doubles ``x``; remembers what each call received; fails on demand by model name."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _check(self, ref: ModelRef) -> None:
        if ref.name == "missing":
            raise NotFound("Servable not found for request: Latest(missing)")
        if ref.name == "busy":
            raise ResourceExhausted("too many requests")
        if ref.name == "broken":
            raise RuntimeError("secret internals")

    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        self._check(ref)
        return {"x": TensorInfo(np.dtype(np.float32), (-1, 2))}

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
        self.calls.append(
            {"ref": ref, "inputs": dict(inputs), "filter": list(output_filter), "timeout": timeout_s,
             "headers": dict(request_headers or {})}
        )  # fmt: skip
        return PredictResult({"y": inputs["x"] * 2}, ref.name, 7, headers={"x-members-answered": "3"})

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        self._check(ref)
        signatures = SignatureDefMap()
        signatures.signature_def["serving_default"].inputs["x"].dtype = DataType.DT_FLOAT
        return ModelMetadata(ref.name, 7, signatures)

    async def status(self, ref: ModelRef) -> list[VersionStatus]:
        self._check(ref)
        return [VersionStatus(7, "AVAILABLE"), VersionStatus(6, "END", "UNKNOWN", "failed to load")]


@pytest.fixture
def rest() -> tuple[TestClient, RecordingCore]:
    core = RecordingCore()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_tfs_router(core, timeout_s=2.5))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    return TestClient(app, raise_server_exceptions=False), core


def test_rest_predict_passes_ref_headers_and_timeout(rest: tuple[TestClient, RecordingCore]) -> None:
    client, core = rest
    response = client.post(
        "/V1/MODELS/m/Labels/champion:Predict",
        content=b'{"signature_name": "s", "instances": [[1, 2]]}',
        headers={"X-Trace": "abc"},
    )
    assert response.status_code == 200
    assert response.json() == {"predictions": [[2.0, 4.0]]}
    assert response.headers["x-members-answered"] == "3"
    call = core.calls[-1]
    assert call["ref"] == ModelRef("m", None, "champion", "s")
    assert call["timeout"] == 2.5
    assert call["headers"]["x-trace"] == "abc"
    assert call["inputs"]["x"].dtype == np.float32
    response = client.post("/v1/models/m/versions/12:predict", content=b'{"inputs": [[1, 2]]}')
    assert response.json() == {"outputs": [[2.0, 4.0]]}
    assert core.calls[-1]["ref"].version == 12


def test_rest_status_and_metadata(rest: tuple[TestClient, RecordingCore]) -> None:
    client, _ = rest
    status = client.get("/v1/models/m/versions/7").json()
    assert status["model_version_status"][0] == {
        "version": "7",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert status["model_version_status"][1]["status"] == {
        "error_code": "UNKNOWN",
        "error_message": "failed to load",
    }
    metadata = client.get("/v1/models/m/metadata").json()
    assert metadata["model_spec"] == {"name": "m", "signature_name": "", "version": "7"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/m:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("POST", "/v1/models/m:predict", b"{nope", 400, "JSON Parse error"),
        ("POST", "/v1/models/missing:predict", b'{"instances": [[1, 2]]}', 404, "Servable not found"),
        ("POST", "/v1/models/busy:predict", b'{"instances": [[1, 2]]}', 429, "too many requests"),
        (
            "POST",
            "/v1/models/broken:predict",
            b'{"instances": [[1, 2]]}',
            500,
            "Internal error: RuntimeError",
        ),
        ("POST", "/v1/models/m:explode", b"{}", 400, "Malformed request: POST /v1/models/m:explode"),
        ("POST", "/v1/models/m/versions/x:predict", b"{}", 400, "Malformed request"),
        # An Arabic-Indic one is a digit to Python, not to TF Serving's pattern: never version 1.
        ("POST", "/v1/models/m/versions/%D9%A1:predict", b"{}", 400, "Malformed request"),
        (
            "POST",
            "/v1/models/m:predict",
            b'{"instances": [[1, 2]], "signature_name": "\\ud800"}',
            400,
            "JSON Parse error: no low surrogate in string",
        ),
        (
            "POST",
            "/v1/models/m:predict",
            b'{"instances": [[NaN, 2]], "signature_name": "\\ud800"}',
            400,
            "The surrogate pair in string is invalid",
        ),
        (
            "POST",
            "/v1/models/m:predict",
            b'{"instances": ' + b"[" * 990 + b"1" + b"]" * 990 + b"}",
            400,
            "a tensor has at most 64 dimensions",
        ),
        ("POST", "/v1/models/m:predict", b'{"instances": [[1e309, 2]]}', 400, "JSON Parse error"),
        ("POST", "/v1/models/m", b"{}", 400, "Malformed request"),
        ("GET", "/v1/models/m:predict", None, 400, "Malformed request"),
        ("GET", "/v1/models", None, 400, "Malformed request: GET /v1/models"),
        ("POST", "/v1/models", b"{}", 400, "Malformed request: POST /v1/models"),
        ("GET", "/v1/models/missing", None, 404, "Servable not found"),
        ("POST", "/v1/models/m:classify", b"{}", 501, "classify"),
        ("GET", "/v2/anything", None, 404, "Not Found"),
    ],
)
def test_rest_errors_are_tf_serving_shaped(
    rest, method: str, path: str, body, status: int, message: str
) -> None:
    client, _ = rest
    response = client.request(method, path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert "secret internals" not in response.text


def test_other_routes_still_work(rest: tuple[TestClient, RecordingCore]) -> None:
    client, _ = rest
    assert client.get("/healthz").json() == {"status": "alive"}


@contextlib.asynccontextmanager
async def _grpc_channel(core: RecordingCore, **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    """The shared servicers (with health and reflection) on a free port, and a channel to them."""
    server = grpc.aio.server(interceptors=[DecodeGuard()])
    add_tfs_servicers(server, core, **options)
    add_health_and_reflection(server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def test_grpc_servicers() -> None:
    async def scenario() -> None:
        core = RecordingCore()
        async with _grpc_channel(core) as channel:
            predict = PredictionServiceStub(channel)
            request = PredictRequest()
            request.model_spec.name = "m"
            request.model_spec.version.value = 5
            request.inputs["x"].CopyFrom(to_tensor_proto(np.array([[1.0, 2.0]], np.float32)))
            request.output_filter.append("y")
            call = predict.Predict(request, timeout=5, metadata=(("x-trace", "abc"),))
            response = await call
            assert from_tensor_proto(response.outputs["y"]).tolist() == [[2.0, 4.0]]
            assert (response.model_spec.name, response.model_spec.version.value) == ("m", 7)
            assert ("x-members-answered", "3") in tuple(await call.trailing_metadata())
            recorded = core.calls[-1]
            assert recorded["ref"] == ModelRef("m", 5, None, "")
            assert recorded["filter"] == ["y"]
            assert recorded["headers"]["x-trace"] == "abc"
            assert 0 < recorded["timeout"] <= 5

            request.model_spec.name = "missing"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await predict.Predict(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            request.model_spec.name = "broken"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await predict.Predict(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in (caught.value.details() or "")

            metadata_request = GetModelMetadataRequest()
            metadata_request.model_spec.name = "m"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await predict.GetModelMetadata(metadata_request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            metadata_request.metadata_field.append("signature_def")
            metadata = await predict.GetModelMetadata(metadata_request, timeout=5)
            signatures = SignatureDefMap()
            assert metadata.metadata["signature_def"].Unpack(signatures)
            assert "serving_default" in signatures.signature_def

            status_request = GetModelStatusRequest()
            status_request.model_spec.name = "m"
            status = await ModelServiceStub(channel).GetModelStatus(status_request, timeout=5)
            assert [s.state for s in status.model_version_status] == [
                ModelVersionStatus.AVAILABLE,
                ModelVersionStatus.END,
            ]
            assert status.model_version_status[1].status.error_message == "failed to load"

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ModelServiceStub(channel).HandleReloadConfigRequest(ReloadConfigRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/tensorflow.serving.PredictionService/Classify")(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_requests_the_http_parser_refuses_get_a_json_error_body() -> None:
    """Answered by the HTTP server before the app runs, still in TF Serving's error shape."""
    from serving.rest.server import uvicorn_server

    async def scenario() -> list[bytes]:
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(create_tfs_router(RecordingCore()))
        port = free_port()
        server = uvicorn_server(app, host="127.0.0.1", port=port, grace_s=1)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            return [
                await asyncio.to_thread(raw_http, port, request)
                for request in (
                    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                    b"GET /v1/models/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /v1/models/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                )
            ]
        finally:
            server.should_exit = True
            await task

    for answer in asyncio.run(scenario()):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/json" in head.lower()
        assert orjson.loads(body) == {"error": "Malformed request: Invalid HTTP request received."}


def test_grpc_bad_tensors_and_specs_are_invalid_arguments() -> None:
    """Never INTERNAL: every one of these is the request's fault, answered before the core runs."""

    def broadcast(shape: list[int], dtype: int = DataType.DT_FLOAT) -> TensorProto:
        proto = TensorProto(dtype=dtype, tensor_shape=shape_proto(shape))  # type: ignore[arg-type]
        proto.float_val.append(1.0)
        return proto

    bad_length = TensorProto(
        dtype=DataType.DT_BFLOAT16, tensor_shape=shape_proto([1, 2]), tensor_content=b"\0"
    )
    cases: list[tuple[str, TensorProto | None, str]] = [
        ("huge", broadcast([300_000, 64]), "tensor parsing error: x: shape [300000, 64] of float decodes to"),
        ("2^40", broadcast([1, 2**40]), "tensor parsing error: x"),
        ("2^31", broadcast([2**31, 2**31]), "tensor parsing error: x"),
        ("2^62", broadcast([2**62, 2**62]), "more than 2**63 - 1 elements"),
        ("70 dims", broadcast([1] * 70), "70 dimensions"),
        ("300 dims", broadcast([1] * 300), "300 dimensions"),
        ("bfloat16", broadcast([1, 2], DataType.DT_BFLOAT16), "Expects arg[x] to be float but bfloat16"),
        ("bfloat16 length", bad_length, "Expects arg[x] to be float but bfloat16"),
        ("empty label", None, "Unrecognized servable version label"),
    ]

    async def scenario() -> None:
        core = RecordingCore()
        async with _grpc_channel(core, max_decoded_bytes=1024 * 1024) as channel:
            predict = PredictionServiceStub(channel)
            for label, proto, message in cases:
                request = PredictRequest()
                request.model_spec.name = "m"
                if proto is None:
                    request.model_spec.version_label = ""
                    proto = broadcast([1, 2])
                request.inputs["x"].CopyFrom(proto)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await predict.Predict(request, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
                assert message in (caught.value.details() or ""), label
            assert core.calls == []
            good = PredictRequest()
            good.model_spec.name = "m"
            good.inputs["x"].CopyFrom(broadcast([2, 2]))
            answer = await predict.Predict(good, timeout=10)
            assert from_tensor_proto(answer.outputs["y"]).tolist() == [[2.0, 2.0], [2.0, 2.0]]

    asyncio.run(scenario())


def test_bytes_that_are_no_message_are_an_invalid_argument_not_unknown() -> None:
    async def scenario() -> None:
        async with _grpc_channel(RecordingCore()) as channel:
            raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
            for data in (b"\xff\xff\xff", b"\x0a\x05\x0a\x03\xff\xfe\xfd", b"\x12\x02"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await raw(data, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (caught.value.details() or "").startswith(
                    "Failed to parse request: Error parsing message"
                )

    asyncio.run(scenario())
