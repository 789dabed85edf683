"""A CSV of the user's own, trained and served as a new user would, queried with plain records.

``ensemble train --data my.csv --target label``, then the local backend and the gateway as real
processes, then the records a user writes (``{"instances": [{"mean_radius": 17.99, "color":
"red"}]}``) over REST and gRPC, against the backend and the gateway, checked against the offline
combination of what each member answers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts import combine
from contracts.manifest import Manifest, MemberRef
from serving.protos import PredictionServiceStub, PredictRequest
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import (
    GATEWAY_READY,
    free_port,
    gateway_args,
    gateway_env,
    spawn_process,
    stop_process,
    wait_ready,
)

pytestmark = pytest.mark.slow

RADIUS = [17.99, 20.57]
COLOR = ["red", "blue"]


@dataclass
class Served:
    manifest: Manifest
    backend_rest: int
    backend_grpc: int
    gateway_rest: int
    gateway_grpc: int


def _write_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["mean_radius,color,label"]
    for _ in range(240):
        radius = round(float(rng.normal(15, 3)), 2)
        color = str(rng.choice(["red", "green", "blue"]))
        label = "big" if radius + (3 if color == "red" else 0) > 16 else "small"
        rows.append(f"{radius},{color},{label}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("own-csv")
    _write_csv(root / "my.csv")
    trained = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--data", str(root / "my.csv"), "--target", "label",
         "--members", "2", "--epochs", "3", "--workers", "1", "--out", str(root / "run"), "--no-track"],
        cwd=root, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    manifest = Manifest.load(root / "run" / "ensemble.json")
    ports = Served(manifest, free_port(), free_port(), free_port(), free_port())
    backend = spawn_process(
        ["-m", "cli", "backend", f"--port={ports.backend_grpc}",
         f"--rest_api_port={ports.backend_rest}", "--host=127.0.0.1",
         f"--model_config_file={root / 'run' / 'models' / 'models.config'}"]
    )  # fmt: skip
    address = f"127.0.0.1:{ports.backend_grpc}"
    gateway = spawn_process(
        gateway_args(
            root / "run" / "ensemble.json",
            {m.name: address for m in manifest.members},
            ports.gateway_rest,
            ports.gateway_grpc,
        ),
        env=gateway_env(),
    )
    try:
        wait_ready(backend, "gRPC on", timeout_s=300)
        wait_ready(gateway, GATEWAY_READY)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{ports.gateway_rest}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.5)
        yield ports
    finally:
        stop_process(gateway)
        stop_process(backend)


def _offline(served: Served, members: list[MemberRef] | None = None) -> np.ndarray:
    """The members' own answers to the two records, asked of the backend, combined offline."""
    members = members or served.manifest.members
    body = orjson.dumps({"inputs": {"mean_radius": RADIUS, "color": COLOR}})
    answers = []
    for member in members:
        response = httpx.post(
            f"http://127.0.0.1:{served.backend_rest}/v1/models/{member.name}:predict",
            content=body,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answers.append({"probabilities": np.asarray(response.json()["outputs"])})
    weights = combine.method_weights(served.manifest.combiner.method, [m.weight for m in members])
    return combine.combine_outputs(answers, weights)["probabilities"]


def test_the_manifest_declares_one_value_per_instance(served: Served) -> None:
    assert {(s.name, s.dtype, tuple(s.shape)) for s in served.manifest.inputs} == {
        ("mean_radius", "float32", (-1,)),
        ("color", "string", (-1,)),
    }


def test_a_plain_record_through_the_gateway_returns_probabilities(served: Served) -> None:
    """What a new user does first: curl one record as they would write it."""
    curl = subprocess.run(
        ["curl", "-s", "-X", "POST", f"http://127.0.0.1:{served.gateway_rest}/v1/models/my:predict",
         "-d", '{"instances": [{"mean_radius": 17.99, "color": "red"}]}'],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (probabilities,) = orjson.loads(curl.stdout)["predictions"]
    assert len(probabilities) == 2
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(probabilities, _offline(served)[0], atol=1e-6)


@pytest.mark.parametrize("server", ["backend", "gateway"])
def test_both_record_forms_over_rest(served: Served, server: str) -> None:
    first = served.manifest.members[0]
    if server == "backend":
        url = f"http://127.0.0.1:{served.backend_rest}/v1/models/{first.name}:predict"
        expected = _offline(served, [first])
    else:
        url = f"http://127.0.0.1:{served.gateway_rest}/v1/models/my:predict"
        expected = _offline(served)
    rows = [{"mean_radius": r, "color": c} for r, c in zip(RADIUS, COLOR, strict=True)]
    by_row = httpx.post(url, content=orjson.dumps({"instances": rows}), timeout=30)
    by_column = httpx.post(
        url, content=orjson.dumps({"inputs": {"mean_radius": RADIUS, "color": COLOR}}), timeout=30
    )
    nested = [{"mean_radius": [r], "color": [c]} for r, c in zip(RADIUS, COLOR, strict=True)]
    earlier_form = httpx.post(url, content=orjson.dumps({"instances": nested}), timeout=30)
    assert by_row.status_code == 200, by_row.text
    assert by_column.status_code == 200, by_column.text
    np.testing.assert_allclose(by_row.json()["predictions"], expected, atol=1e-6)
    np.testing.assert_allclose(by_column.json()["outputs"], expected, atol=1e-6)
    if server == "gateway":  # the gateway also takes the nested form clients of earlier models send
        assert earlier_form.status_code == 200, earlier_form.text
        np.testing.assert_allclose(earlier_form.json()["predictions"], expected, atol=1e-6)
    else:  # the backend takes what the signature declares, as TF Serving does
        assert earlier_form.status_code == 400
        assert "signature expects [?]" in earlier_form.json()["error"]


@pytest.mark.parametrize("server", ["backend", "gateway"])
def test_both_record_forms_over_grpc(served: Served, server: str) -> None:
    first = served.manifest.members[0]
    port, model = (served.backend_grpc, first.name) if server == "backend" else (served.gateway_grpc, "my")
    expected = _offline(served, [first] if server == "backend" else None)

    def predict(shape: tuple[int, ...]) -> np.ndarray:
        request = PredictRequest()
        request.model_spec.name = model
        request.inputs["mean_radius"].CopyFrom(to_tensor_proto(np.array(RADIUS, np.float32).reshape(shape)))
        request.inputs["color"].CopyFrom(
            to_tensor_proto(np.array([c.encode() for c in COLOR], dtype=object).reshape(shape))
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = PredictionServiceStub(channel).Predict(request, timeout=30)
        return from_tensor_proto(answer.outputs["probabilities"])

    np.testing.assert_allclose(predict((2,)), expected, atol=1e-6)
    if server == "gateway":
        np.testing.assert_allclose(predict((2, 1)), expected, atol=1e-6)
    else:
        with pytest.raises(grpc.RpcError) as caught:
            predict((2, 1))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
