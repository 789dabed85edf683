"""Bad input against the gateway as a real process: a fuzz corpus, and memory across an oversized burst.

Every hostile case must be answered without a 5xx / INTERNAL, in TF Serving's JSON error shape on
REST, and must cost nobody else: a good request is answered correctly after each case, no member
ever sees a failure (so no breaker moves), and the gateway's memory is where it was after a burst.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts.manifest import Manifest
from serving.errors import http_status
from serving.protos import DataType, PredictionServiceStub, PredictRequest, PredictResponse, TensorProto
from serving.protos.inference.open_inference_grpc_pb2 import ModelInferResponse
from serving.tensors import from_tensor_proto, shape_proto, to_tensor_proto
from serving.testing import N_FEATURES
from tests.conftest import raw_http
from tests.serving.fuzz_corpus import (
    Input,
    grpc_cases,
    oip_grpc_cases,
    oip_rest_cases,
    rest_cases,
    valid_oip_grpc_request,
    valid_oip_rest_body,
    valid_rest_body,
)
from tests.serving.gateway.test_gateway_process import Deployment, deployment, offline, rows

pytestmark = pytest.mark.slow

INPUTS = [Input("x", "float32", (N_FEATURES,))]
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # A decoded-size bound below what the largest accepted body holds, so REST bodies can cross it.
    env = {"ENSEMBLE_MAX_BODY_BYTES": str(8 * 2**20), "ENSEMBLE_MAX_DECODED_BYTES": str(2**20)}
    with deployment(tmp_path_factory.mktemp("bad-input"), env=env) as deploy:
        yield deploy


def _no_member_was_blamed(deploy: Deployment) -> None:
    metrics = httpx.get(f"{deploy.url}/metrics", timeout=10).text
    assert "ensemble_member_failures_total{" not in metrics, "a request's own fault reached a member"
    for line in metrics.splitlines():
        if line.startswith("ensemble_member_breaker_open{"):
            assert line.endswith(" 0.0"), line


def _rest_problem(response: httpx.Response) -> str | None:
    """What is wrong with an answer to a hostile request, or None."""
    if response.status_code >= 500:
        return f"status {response.status_code}: {response.text[:200]}"
    if response.headers.get("content-type") != "application/json":
        return f"content-type {response.headers.get('content-type')}: {response.text[:200]}"
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return f"not JSON: {response.text[:200]}"
    if response.status_code >= 400 and (set(doc) != {"error"} or not isinstance(doc["error"], str)):
        return f"not TF Serving's error shape: {response.text[:200]}"
    return None


def test_rest_fuzz_corpus_never_5xx_always_json_and_good_requests_still_answered(
    running: Deployment,
) -> None:
    manifest = Manifest.load(running.manifest_path)
    good = valid_rest_body(INPUTS)
    expected = offline(manifest, np.array([row["x"] for row in orjson.loads(good)["instances"]], np.float32))
    cases = rest_cases("toy", INPUTS)
    assert len(cases) > 250
    problems: list[str] = []
    refused = 0
    with httpx.Client(timeout=30) as client:
        for case in cases:
            answer = client.post(f"{running.url}{case.path}", content=case.body)
            refused += answer.status_code >= 400
            problem = _rest_problem(answer)
            if problem:
                problems.append(f"{case.label}: {problem}")
            after = client.post(f"{running.url}/v1/models/toy:predict", content=good)
            if after.status_code != 200:
                problems.append(f"good request after {case.label}: {after.status_code} {after.text[:200]}")
            else:
                np.testing.assert_allclose(after.json()["predictions"], expected, atol=1e-6)
    assert problems == []
    assert refused > len(cases) // 2  # the corpus is mostly hostile, not mostly accepted
    _no_member_was_blamed(running)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"GET /v1/models/" + b"t" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["content-length abc", "70 KiB URL", "non-UTF-8 URL", "bad chunk", "garbage"],
)
def test_http_the_server_cannot_parse_still_gets_a_json_error(
    running: Deployment, request_bytes: bytes
) -> None:
    head, _, body = raw_http(running.rest_port, request_bytes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower()
    assert orjson.loads(body) == {"error": "Malformed request: Invalid HTTP request received."}


def test_grpc_fuzz_corpus_never_internal_and_good_requests_still_answered(running: Deployment) -> None:
    manifest = Manifest.load(running.manifest_path)
    x = rows(2, seed=9)
    good = PredictRequest()
    good.model_spec.name = "toy"
    good.inputs["x"].CopyFrom(to_tensor_proto(x))
    cases = grpc_cases("toy", INPUTS)
    assert len(cases) > 150

    async def scenario() -> list[str]:
        problems: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            raw = channel.unary_unary(PREDICT)
            stub = PredictionServiceStub(channel)
            for case in cases:
                try:
                    await raw(case.request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if http_status(exc.code()) >= 500:
                        problems.append(f"{case.label}: {exc.code().name} {exc.details()}")
                answer: PredictResponse = await stub.Predict(good, timeout=30)
                np.testing.assert_allclose(
                    from_tensor_proto(answer.outputs["probabilities"]), offline(manifest, x), atol=1e-6
                )
        return problems

    assert asyncio.run(scenario()) == []
    _no_member_was_blamed(running)


def test_oip_rest_fuzz_corpus_never_5xx_always_one_line_json_and_good_requests_still_answered(
    running: Deployment,
) -> None:
    """The Open Inference Protocol's REST ``infer`` under the same rules: every malformed request is
    a 4xx with a one-line JSON error, before any member is called, and the gateway keeps serving."""
    manifest = Manifest.load(running.manifest_path)
    good = valid_oip_rest_body(INPUTS)
    x = np.array(orjson.loads(good)["inputs"][0]["data"], np.float32)
    expected = offline(manifest, x)
    cases = oip_rest_cases("toy", INPUTS)
    assert len(cases) > 150
    problems: list[str] = []
    refused = 0
    with httpx.Client(timeout=30) as client:
        for case in cases:
            answer = client.post(f"{running.url}{case.path}", content=case.body, headers=case.headers)
            refused += answer.status_code >= 400
            problem = _rest_problem(answer)
            if problem is None and answer.status_code >= 400 and "\n" in answer.json()["error"]:
                problem = f"a multi-line error: {answer.text[:200]}"
            if problem:
                problems.append(f"{case.label}: {problem}")
            after = client.post(f"{running.url}/v2/models/toy/infer", content=good)
            if after.status_code != 200:
                problems.append(f"good request after {case.label}: {after.status_code} {after.text[:200]}")
            else:
                data = after.json()["outputs"][0]["data"]
                np.testing.assert_allclose(np.reshape(data, expected.shape), expected, atol=1e-6)
    assert problems == []
    assert refused > len(cases) // 2
    _no_member_was_blamed(running)


def test_oip_rest_declared_size_is_bounded_before_decoding(running: Deployment) -> None:
    """A few bytes that declare a tensor over the decoded-size bound get TF Serving's routes' message."""
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**20, 64], "data": [1.0]}]})
    answer = httpx.post(f"{running.url}/v2/models/toy/infer", content=body, timeout=30)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"tensor parsing error: x: shape [{2**20}, 64] of FP32 decodes to {2**28} bytes, "
        f"more than the {2**20} bytes one request may decode to"
    }


def test_oip_grpc_fuzz_corpus_never_internal_and_good_requests_still_answered(running: Deployment) -> None:
    manifest = Manifest.load(running.manifest_path)
    good = valid_oip_grpc_request("toy", INPUTS)
    x = np.array(good.inputs[0].contents.fp32_contents, np.float32).reshape(list(good.inputs[0].shape))
    expected = offline(manifest, x)
    cases = oip_grpc_cases("toy", INPUTS)
    assert len(cases) > 100

    async def scenario() -> tuple[list[str], int, str]:
        problems: list[str] = []
        refused = 0
        oversized = ""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            infer = channel.unary_unary(MODEL_INFER, response_deserializer=ModelInferResponse.FromString)
            for case in cases:
                try:
                    await infer(case.request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    refused += 1
                    details = exc.details() or ""
                    if http_status(exc.code()) >= 500 or "\n" in details:
                        problems.append(f"{case.label}: {exc.code().name} {details}")
                    if case.label == "declared [2^20, 64], one value":
                        oversized = f"{exc.code().name} {details}"
                answer: ModelInferResponse = await infer(good.SerializeToString(), timeout=30)
                got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(expected.shape)
                np.testing.assert_allclose(got, expected, atol=1e-6)
        return problems, refused, oversized

    problems, refused, oversized = asyncio.run(scenario())
    assert problems == []
    assert refused > len(cases) // 2
    assert oversized == (
        f"INVALID_ARGUMENT tensor parsing error: x: shape [{2**20}, 64] of FP32 decodes to {2**28} bytes, "
        f"more than the {2**20} bytes one request may decode to"
    )
    _no_member_was_blamed(running)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fill_form(shape: list[int]) -> PredictRequest:
    request = PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(
        TensorProto(dtype=DataType.DT_FLOAT, tensor_shape=shape_proto(shape), float_val=[1.0])
    )
    return request


def test_an_oversized_burst_costs_other_clients_nothing_and_memory_returns(running: Deployment) -> None:
    """Fill-form tensors of gigabytes, bodies over the limit and bodies over the decoded bound, in
    parallel, while another client keeps predicting: every good answer arrives and is right, and
    the gateway's memory ends where it started."""
    assert running.gateway is not None
    pid = running.gateway.pid
    manifest = Manifest.load(running.manifest_path)
    x = rows(4, seed=3)
    expected = offline(manifest, x)
    body = orjson.dumps({"instances": x.tolist()})
    with httpx.Client(timeout=30) as client:  # warm every path once before the baseline
        for _ in range(20):
            assert client.post(f"{running.url}/v1/models/toy:predict", content=body).status_code == 200
    baseline = _rss_bytes(pid)

    good_answers: list[int] = []
    wrong: list[str] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answer = client.post(f"{running.url}/v1/models/toy:predict", content=body)
                if answer.status_code != 200:
                    wrong.append(f"{answer.status_code} {answer.text[:200]}")
                elif not np.allclose(answer.json()["predictions"], expected, atol=1e-6):
                    wrong.append("wrong answer")
                good_answers.append(answer.status_code)

    over_body = b'{"instances": [' + b"[1.5, 2.5, 3.5, 4.5]," * 450_000 + b"[1, 2, 3, 4]]}"  # ~9.5 MB
    over_decoded = b'{"instances": [' + b"[1.5, 2.5, 3.5, 4.5]," * 300_000 + b"[1, 2, 3, 4]]}"  # ~6.3 MB

    async def burst() -> list[str]:
        codes: list[str] = []
        limits = httpx.Limits(max_connections=8)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel,
            httpx.AsyncClient(timeout=60, limits=limits) as client,
        ):
            stub = PredictionServiceStub(channel)

            async def grpc_call(request: PredictRequest) -> None:
                try:
                    await stub.Predict(request, timeout=60)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)

            async def rest_call(content: bytes) -> None:
                answer = await client.post(f"{running.url}/v1/models/toy:predict", content=content)
                codes.append(str(answer.status_code))

            for _ in range(3):
                await asyncio.gather(
                    *(grpc_call(_fill_form([2**20, 64])) for _ in range(10)),
                    *(grpc_call(_fill_form([300_000, 64])) for _ in range(10)),
                    *(rest_call(over_body) for _ in range(4)),
                    *(rest_call(over_decoded) for _ in range(4)),
                )
        return codes

    worker = threading.Thread(target=keep_predicting)
    worker.start()
    try:
        codes = asyncio.run(burst())
    finally:
        stop.set()
        worker.join(timeout=60)
    assert sorted(set(codes)) == ["400", "413", "INVALID_ARGUMENT"]
    assert wrong == []
    assert len(good_answers) > 0
    # Each fill-form request declared 77 or 256 MiB and there were 60 of them; REST bodies of 6 to
    # 10 MB were refused 24 times. What may stay is allocator noise, a few MB, not hundreds.
    grown = _rss_bytes(pid) - baseline
    settle_until = time.monotonic() + 10
    while grown >= 24 * 2**20 and time.monotonic() < settle_until:
        time.sleep(0.5)  # the last answers' buffers may still be going
        grown = _rss_bytes(pid) - baseline
    assert grown < 24 * 2**20, f"the gateway kept {grown / 2**20:.1f} MiB after the burst"
    _no_member_was_blamed(running)
