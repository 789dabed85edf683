"""``ensemble backend`` as a real process on free ports, against a tiny exported Keras member.

The official ``tensorflow-serving-api`` client runs in this test process: our protos live in a
private descriptor pool, so they and TensorFlow's coexist.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contracts.model_config import ModelEntry, write_model_config
from serving.testing import free_port
from tests.serving.local_server.export_model import export

pytestmark = pytest.mark.slow

FEATURES = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
COLORS = ["red", "blue"]  # one value per instance, as training exports a single column


@dataclass
class Backend:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    repo: Path
    staging: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _expected(path: Path) -> np.ndarray:
    """What the SavedModel itself answers in-process."""
    import tensorflow as tf

    loaded: Any = tf.saved_model.load(str(path))
    answer = loaded.signatures["serving_default"](
        features=tf.constant(FEATURES, tf.float32), color=tf.constant(COLORS, tf.string)
    )
    return np.asarray(answer["probabilities"].numpy())


def _wait_ready(backend: Backend, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if backend.proc.poll() is not None:
            pytest.fail(f"backend exited with {backend.proc.returncode}:\n{backend.log_tail()}")
        try:
            if httpx.get(f"{backend.url}/v1/models/m", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"backend not ready in {timeout_s}s:\n{backend.log_tail()}")


def _start_backend(config: Path, repo: Path, staging: Path, log: Path) -> Backend:
    """``ensemble backend`` on free ports, re-reading ``config`` every second (default retries)."""
    grpc_port, rest_port = free_port(), free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable, "-c", "from cli.main import main; main()", "backend",
                f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
                f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                "--file_system_poll_wait_seconds=1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )  # fmt: skip
    return Backend(proc, grpc_port, rest_port, repo, staging, log)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("backend")
    repo, staging = root / "repo", root / "staging"
    export(repo / "m" / "1", scale=1.0)
    export(repo / "m" / "2", scale=2.0)
    export(staging / "3", scale=-1.0)
    config = repo / "models.config"
    write_model_config(
        config,
        [ModelEntry("m", "m", versions=[1, 2], labels={"champion": 1, "challenger": 2})],
    )
    handle = _start_backend(config, repo, staging, root / "backend.log")
    proc = handle.proc
    try:
        _wait_ready(handle)
        yield handle
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _predict(backend: Backend, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{backend.url}{path}", content=body, timeout=30)


def test_rest_predict_row_and_columnar_match_the_saved_model(backend: Backend) -> None:
    v1, v2 = _expected(backend.repo / "m" / "1"), _expected(backend.repo / "m" / "2")
    rows = [{"features": f, "color": c} for f, c in zip(FEATURES, COLORS, strict=True)]
    row = _predict(backend, "/v1/models/m/versions/1:predict", json.dumps({"instances": rows}).encode())
    assert row.status_code == 200, row.text
    np.testing.assert_allclose(row.json()["predictions"], v1, rtol=1e-6)

    columnar = json.dumps({"inputs": {"features": FEATURES, "color": COLORS}}).encode()
    latest = _predict(backend, "/v1/models/m:predict", columnar)
    assert latest.status_code == 200, latest.text
    np.testing.assert_allclose(latest.json()["outputs"], v2, rtol=1e-6)
    labelled = _predict(backend, "/V1/Models/m/LABELS/champion:Predict", columnar)
    np.testing.assert_allclose(labelled.json()["outputs"], v1, rtol=1e-6)

    b64 = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"features": FEATURES[0], "color": {"b64": "cmVk"}}],
        }
    ).encode()
    decoded = _predict(backend, "/v1/models/m/versions/1:predict", b64)
    np.testing.assert_allclose(decoded.json()["predictions"], v1[:1], rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, "x", 3], "color": "red"}]}', 400,
         'JSON Value: "x" Type: String is not of expected type: float'),
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2], "color": "red"}]}', 400,
         "input features has shape [1,2] but the signature expects [?,3]"),
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2, 3], "color": "red"}, '
         b'{"features": [1, 2], "color": "red"}]}', 400, "Expecting tensor size: 3 but got: 2"),
        # As TF Serving: the local backend takes what the signature declares, [-1] here.
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2, 3], "color": ["red"]}]}', 400,
         "input color has shape [1,1] but the signature expects [?]"),
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2, 3]}]}', 400,
         "keys must be equal to: color,features"),
        ("/v1/models/nope:predict", b'{"instances": [1]}', 404,
         "Servable not found for request: Latest(nope)"),
        ("/v1/models/m/versions/9:predict", b'{"instances": [1]}', 404,
         "Servable not found for request: Specific(m, 9)"),
        ("/v1/models/m/labels/nope:predict", b'{"instances": [1]}', 400,
         "Unrecognized servable version label: nope"),
        ("/v1/models/m:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("/v1/models/m:predict", b'{"instances": [1,', 400, "JSON Parse error"),
        ("/v1/models/m:predict", b'{"signature_name": "other", "instances": [1]}', 400,
         'Serving signature key "other" not found.'),
        ("/v1/models/m/versions/one:predict", b"{}", 400, "Malformed request"),
    ],
)  # fmt: skip
def test_rest_errors(backend: Backend, path: str, body: bytes, status: int, message: str) -> None:
    response = _predict(backend, path, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_rest_status_and_metadata(backend: Backend) -> None:
    status = httpx.get(f"{backend.url}/v1/models/m", timeout=10).json()
    assert {s["version"]: s["state"] for s in status["model_version_status"]} == {
        "1": "AVAILABLE",
        "2": "AVAILABLE",
    }
    metadata = httpx.get(f"{backend.url}/v1/models/m/labels/challenger/metadata", timeout=10).json()
    assert metadata["model_spec"]["version"] == "2"
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"features", "color"}
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert httpx.get(f"{backend.url}/v1/models/nope", timeout=10).status_code == 404


def test_official_client_predict_metadata_status(backend: Backend) -> None:
    import grpc
    import tensorflow as tf
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    with grpc.insecure_channel(f"127.0.0.1:{backend.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.model_spec.version_label = "challenger"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array(FEATURES, np.float32)))
        request.inputs["color"].CopyFrom(tf.make_tensor_proto(np.array(COLORS, dtype=object)))
        response = stub.Predict(request, timeout=30)
        assert response.model_spec.version.value == 2
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["probabilities"]), _expected(backend.repo / "m" / "2"), rtol=1e-6
        )

        request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array(FEATURES, np.float64)))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Expects arg[features] to be float but double is provided" in caught.value.details()

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = "m"
        metadata_request.metadata_field.append("signature_def")
        metadata = stub.GetModelMetadata(metadata_request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert metadata.metadata["signature_def"].Unpack(signatures)
        inputs = signatures.signature_def["serving_default"].inputs
        assert inputs["features"].dtype == tf.float32.as_datatype_enum
        assert [d.size for d in inputs["features"].tensor_shape.dim] == [-1, 3]

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "m"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
        assert {s.version: s.state for s in status.model_version_status} == {
            1: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        }
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_fuzz_corpus_never_5xx_or_internal_and_good_requests_still_answered(backend: Backend) -> None:
    """The gateway's hostile corpus, against the local backend: TF Serving's codes, JSON errors."""
    import grpc

    from serving.errors import http_status
    from serving.protos import PredictionServiceStub, PredictRequest
    from serving.tensors import from_tensor_proto, to_tensor_proto
    from tests.serving.fuzz_corpus import Input, grpc_cases, rest_cases

    inputs = [Input("features", "float32", (3,)), Input("color", "string", ())]
    expected = _expected(backend.repo / "m" / "2")
    good = json.dumps({"inputs": {"features": FEATURES, "color": COLORS}}).encode()
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        for case in rest_cases("m", inputs, random_count=120):
            answer = client.post(f"{backend.url}{case.path}", content=case.body)
            if answer.status_code >= 500 or answer.headers.get("content-type") != "application/json":
                problems.append(f"{case.label}: {answer.status_code} {answer.text[:200]}")
            elif answer.status_code >= 400 and set(answer.json()) != {"error"}:
                problems.append(f"{case.label}: not TF Serving's error shape: {answer.text[:200]}")
            after = client.post(f"{backend.url}/v1/models/m:predict", content=good)
            assert after.status_code == 200, f"after {case.label}: {after.text}"
            np.testing.assert_allclose(after.json()["outputs"], expected, rtol=1e-6)

    request = PredictRequest()
    request.model_spec.name = "m"
    request.inputs["features"].CopyFrom(to_tensor_proto(np.array(FEATURES, np.float32)))
    request.inputs["color"].CopyFrom(to_tensor_proto(np.array([c.encode() for c in COLORS], dtype=object)))
    with grpc.insecure_channel(f"127.0.0.1:{backend.grpc_port}") as channel:
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        stub = PredictionServiceStub(channel)
        for grpc_case in grpc_cases("m", inputs, random_count=90):
            try:
                raw(grpc_case.request, timeout=30)
            except grpc.RpcError as exc:
                if http_status(exc.code()) >= 500:
                    problems.append(f"{grpc_case.label}: {exc.code().name} {exc.details()}")
            answer = stub.Predict(request, timeout=30)
            np.testing.assert_allclose(
                from_tensor_proto(answer.outputs["probabilities"]), expected, rtol=1e-6
            )
    assert problems == []


def test_oip_fuzz_corpus_never_5xx_or_internal_and_good_requests_still_answered(backend: Backend) -> None:
    """The Open Inference Protocol's hostile corpus (REST and gRPC ``infer``) against the backend."""
    import grpc

    from serving.errors import http_status
    from serving.protos.inference.open_inference_grpc_pb2 import ModelInferRequest, ModelInferResponse
    from tests.serving.fuzz_corpus import Input, oip_grpc_cases, oip_rest_cases

    inputs = [Input("features", "float32", (3,)), Input("color", "string", ())]
    expected = _expected(backend.repo / "m" / "2")
    tensors = [
        {"name": "features", "datatype": "FP32", "shape": [len(FEATURES), 3], "data": FEATURES},
        {"name": "color", "datatype": "BYTES", "shape": [len(COLORS)], "data": COLORS},
    ]
    good = json.dumps({"inputs": tensors}).encode()
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        for case in oip_rest_cases("m", inputs, random_count=80):
            answer = client.post(f"{backend.url}{case.path}", content=case.body, headers=case.headers)
            if answer.status_code >= 500 or answer.headers.get("content-type") != "application/json":
                problems.append(f"{case.label}: {answer.status_code} {answer.text[:200]}")
            elif answer.status_code >= 400 and (
                set(answer.json()) != {"error"} or "\n" in answer.json()["error"]
            ):
                problems.append(f"{case.label}: not a one-line JSON error: {answer.text[:200]}")
            after = client.post(f"{backend.url}/v2/models/m/infer", content=good)
            assert after.status_code == 200, f"after {case.label}: {after.text}"
            data = after.json()["outputs"][0]["data"]
            np.testing.assert_allclose(np.reshape(data, expected.shape), expected, rtol=1e-6)

    request = ModelInferRequest(model_name="m")
    features = request.inputs.add(name="features", datatype="FP32", shape=[len(FEATURES), 3])
    features.contents.fp32_contents.extend(value for row in FEATURES for value in row)
    color = request.inputs.add(name="color", datatype="BYTES", shape=[len(COLORS)])
    color.contents.bytes_contents.extend(c.encode() for c in COLORS)
    with grpc.insecure_channel(f"127.0.0.1:{backend.grpc_port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", response_deserializer=ModelInferResponse.FromString
        )
        for grpc_case in oip_grpc_cases("m", inputs, random_count=60):
            try:
                infer(grpc_case.request, timeout=30)
            except grpc.RpcError as exc:
                if http_status(exc.code()) >= 500:
                    problems.append(f"{grpc_case.label}: {exc.code().name} {exc.details()}")
            answer = infer(request.SerializeToString(), timeout=30)
            got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(expected.shape)
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert problems == []


def _health(port: int) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def test_a_corrupt_newest_version_at_restart_falls_back_and_health_tells_the_truth(
    backend: Backend, tmp_path: Path
) -> None:
    """TF Serving keeps its ports closed through five one-minute retries and then exits; this
    backend opens them after the first try, serves the good older version meanwhile, and its
    health says SERVING only while every model has a version to serve."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        shutil.copytree(backend.repo / "m" / str(version), repo / "m" / str(version))
    (repo / "m" / "3").mkdir()
    (repo / "m" / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = repo / "models.config"
    write_model_config(config, [ModelEntry("m", "m")])
    restarted = _start_backend(config, repo, backend.staging, tmp_path / "backend.log")  # default retries
    grpc_port, proc = restarted.grpc_port, restarted.proc
    try:
        _wait_ready(restarted)
        states = {
            s["version"]: s["state"]
            for s in httpx.get(f"{restarted.url}/v1/models/m", timeout=10).json()["model_version_status"]
        }
        assert states == {"2": "AVAILABLE", "3": "LOADING"}, restarted.log_tail()  # open before any retry
        assert _health(grpc_port) == "SERVING"
        answer = _predict(
            restarted,
            "/v1/models/m:predict",
            json.dumps({"inputs": {"features": FEATURES, "color": COLORS}}).encode(),
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], _expected(repo / "m" / "2"), rtol=1e-6)

        # A model with nothing loadable makes the server not ready, and says why.
        (repo / "bad" / "1").mkdir(parents=True)
        (repo / "bad" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel either")
        write_model_config(config, [ModelEntry("m", "m"), ModelEntry("bad", "bad")])
        _wait_for(lambda: _health(grpc_port) == "NOT_SERVING")
        assert "health: NOT_SERVING: bad has no version available" in restarted.log_tail()
        assert _predict(restarted, "/v1/models/m:predict", answer.request.content).status_code == 200

        # A good newer version replaces both the corrupt one and the fallback.
        write_model_config(config, [ModelEntry("m", "m")])
        shutil.copytree(backend.staging / "3", repo / "m" / ".4.tmp")
        (repo / "m" / ".4.tmp").rename(repo / "m" / "4")

        def newest_only() -> bool:
            doc = httpx.get(f"{restarted.url}/v1/models/m", timeout=5).json()
            states = {s["version"]: s["state"] for s in doc["model_version_status"]}
            return states.get("4") == "AVAILABLE" and states.get("2") == "END"

        _wait_for(newest_only)
        assert _health(grpc_port) == "SERVING"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_for(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_config_change_and_new_version_while_serving(backend: Backend) -> None:
    body = json.dumps({"inputs": {"features": FEATURES, "color": COLORS}}).encode()
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def keep_predicting() -> None:
        nonlocal answered
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{backend.url}/v1/models/m:predict", content=body)
                if response.status_code != 200:
                    failures.append(response.text)
                answered += 1

    worker = threading.Thread(target=keep_predicting)
    worker.start()
    try:
        # The label moves with a config change.
        config = backend.repo / "models.config"
        write_model_config(config, [ModelEntry("m", "m", versions=[1, 2], labels={"champion": 2})])
        _wait_for(
            lambda: httpx.get(f"{backend.url}/v1/models/m/labels/champion", timeout=5).json()
            .get("model_version_status", [{}])[0].get("version") == "2"
        )  # fmt: skip
        # A new version folder appears (renamed into place, as a sync does) under a policy that wants it.
        write_model_config(config, [ModelEntry("m", "m", latest=1)])
        shutil.copytree(backend.staging / "3", backend.repo / "m" / ".3.tmp")
        (backend.repo / "m" / ".3.tmp").rename(backend.repo / "m" / "3")

        def only_three() -> bool:
            doc = httpx.get(f"{backend.url}/v1/models/m", timeout=5).json()
            states = {s["version"]: s["state"] for s in doc["model_version_status"]}
            return states.get("3") == "AVAILABLE" and states.get("2") == "END"

        _wait_for(only_three)
        newest = httpx.post(f"{backend.url}/v1/models/m:predict", content=body, timeout=30).json()
        np.testing.assert_allclose(newest["outputs"], _expected(backend.repo / "m" / "3"), rtol=1e-6)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert answered > 0
    assert failures == []


def test_sigterm_stops_cleanly(backend: Backend) -> None:
    backend.proc.send_signal(signal.SIGTERM)
    assert backend.proc.wait(timeout=60) == 0
    assert "stopped" in backend.log_tail()
