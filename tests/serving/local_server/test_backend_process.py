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

from serving.model_config import ModelEntry, write_model_config
from tests.conftest import free_port
from tests.serving.local_server.export_model import export

pytestmark = pytest.mark.slow

FEATURES = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
COLORS = [["red"], ["blue"]]


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
    grpc_port, rest_port = free_port(), free_port()
    log = root / "backend.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable, "-c", "import ensemble_cli; ensemble_cli.main()", "backend",
                f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
                f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                "--file_system_poll_wait_seconds=1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )  # fmt: skip
    handle = Backend(proc, grpc_port, rest_port, repo, staging, log)
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
            "instances": [{"features": FEATURES[0], "color": [{"b64": "cmVk"}]}],
        }
    ).encode()
    decoded = _predict(backend, "/v1/models/m/versions/1:predict", b64)
    np.testing.assert_allclose(decoded.json()["predictions"], v1[:1], rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, "x", 3], "color": ["red"]}]}', 400,
         'JSON Value: "x" Type: String is not of expected type: float'),
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2], "color": ["red"]}]}', 400,
         "input features has shape [1,2] but the signature expects [?,3]"),
        ("/v1/models/m:predict", b'{"instances": [{"features": [1, 2, 3], "color": ["red"]}, '
         b'{"features": [1, 2], "color": ["red"]}]}', 400, "Expecting tensor size: 3 but got: 2"),
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
