"""End to end with real models: a tiny trained ensemble, the local backend, the gateway in front.

The members are real Keras SavedModels served by ``ensemble backend``; one of them gets 3 s of
added latency through the backend's fault injection and must be cut off by the member deadline.
The expected answer is computed offline from each member's own answer (asked of the backend
directly) with the shared combine functions.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
import pytest

from contracts import combine
from contracts.manifest import Manifest
from serving.testing import (
    GATEWAY_READY,
    free_port,
    gateway_args,
    gateway_env,
    spawn_process,
    stop_process,
    wait_ready,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

STRAGGLER_INDEX = 1


@dataclass
class Stack:
    manifest: Manifest
    backend_rest: int
    gateway_rest: int
    gateway_grpc: int


def _inputs(manifest: Manifest, rows: int) -> dict[str, list[object]]:
    rng = np.random.default_rng(3)
    inputs: dict[str, list[object]] = {}
    for spec in manifest.inputs:
        shape = [rows, *(d if d > 0 else 1 for d in spec.shape[1:])]
        if spec.dtype.startswith("float"):
            inputs[spec.name] = rng.uniform(0, 16, size=shape).round(0).tolist()
        elif spec.dtype.startswith("int"):
            inputs[spec.name] = rng.integers(0, 3, size=shape).tolist()
        else:
            pytest.skip(f"input dtype {spec.dtype} not generated here")
    return inputs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    out = tmp_path_factory.mktemp("tiny-ensemble")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from training.testing import train_tiny; "
            "train_tiny(sys.argv[1], members=3, epochs=2, extra={'assemble.weights': 'uniform'})",
            str(out),
        ],
        cwd=REPO_ROOT,
        check=True,
        timeout=900,
        capture_output=True,
    )
    manifest = Manifest.load(out / "ensemble.json")
    assert len(manifest.members) == 3, "uniform weights keep every member"
    straggler = manifest.members[STRAGGLER_INDEX].name
    faults = out / "faults.yaml"
    faults.write_text(f"models:\n  {straggler}:\n    latency_ms: 3000\n")
    backend_grpc, backend_rest = free_port(), free_port()
    gateway_rest, gateway_grpc = free_port(), free_port()
    backend = spawn_process(
        [
            "-m",
            "cli",
            "backend",
            f"--port={backend_grpc}",
            f"--rest_api_port={backend_rest}",
            "--host=127.0.0.1",
            f"--model_config_file={out / 'models' / 'models.config'}",
            f"--fault_config={faults}",
        ]
    )
    address = f"127.0.0.1:{backend_grpc}"
    gateway = spawn_process(
        gateway_args(
            out / "ensemble.json", {m.name: address for m in manifest.members}, gateway_rest, gateway_grpc
        ),
        env=gateway_env(),
    )
    try:
        wait_ready(backend, "gRPC on", timeout_s=300)
        wait_ready(gateway, GATEWAY_READY)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{gateway_rest}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.5)
        yield Stack(manifest, backend_rest, gateway_rest, gateway_grpc)
    finally:
        stop_process(gateway)
        stop_process(backend)


def _member_answers(stack: Stack, body: bytes) -> list[dict[str, np.ndarray]]:
    answers = []
    with httpx.Client(timeout=30) as client:
        for member in stack.manifest.members:
            response = client.post(
                f"http://127.0.0.1:{stack.backend_rest}/v1/models/{member.name}:predict", content=body
            )
            assert response.status_code == 200, response.text
            outputs = response.json()["outputs"]
            if not isinstance(outputs, dict):
                outputs = {stack.manifest.outputs[0].name: outputs}
            answers.append({name: np.asarray(value) for name, value in outputs.items()})
    return answers


def _offline(
    stack: Stack, answers: list[dict[str, np.ndarray]], answered: list[bool]
) -> dict[str, np.ndarray]:
    manifest = stack.manifest
    weights = combine.method_weights(manifest.combiner.method, manifest.weights)
    used = combine.renormalized(weights, answered)[np.asarray(answered)]
    return combine.combine_outputs([a for a, ok in zip(answers, answered, strict=True) if ok], used)


def test_straggler_is_cut_off_and_the_rest_match_offline(stack: Stack) -> None:
    inputs = _inputs(stack.manifest, 4)
    body = orjson.dumps({"inputs": inputs})
    answered = [i != STRAGGLER_INDEX for i in range(len(stack.manifest.members))]
    expected = _offline(stack, _member_answers(stack, body), answered)
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"http://127.0.0.1:{stack.gateway_rest}/v1/models/{stack.manifest.name}:predict", content=body
        )
        metrics = client.get(f"http://127.0.0.1:{stack.gateway_rest}/metrics").text
    assert response.status_code == 200, response.text
    assert response.headers["x-ensemble-members"] == f"{sum(answered)}/{len(answered)}"
    outputs = response.json()["outputs"]
    if not isinstance(outputs, dict):
        outputs = {stack.manifest.outputs[0].name: outputs}
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(outputs[name]), value, atol=1e-6)
    straggler = stack.manifest.members[STRAGGLER_INDEX]
    series = (
        f'ensemble_member_failures_total{{member="{straggler.name}",reason="deadline",'
        f'version="{straggler.version}"}}'
    )
    assert series in metrics


def test_official_client_against_real_members(stack: Stack) -> None:
    if any(not spec.dtype.startswith("float") for spec in stack.manifest.inputs):
        pytest.skip("the official-client script sends float inputs")
    inputs = _inputs(stack.manifest, 3)
    body = orjson.dumps({"inputs": inputs})
    answered = [i != STRAGGLER_INDEX for i in range(len(stack.manifest.members))]
    expected = _offline(stack, _member_answers(stack, body), answered)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.serving.gateway.official_client",
            f"127.0.0.1:{stack.gateway_grpc}",
            stack.manifest.name,
        ],
        input=orjson.dumps(inputs).decode(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = orjson.loads(result.stdout.strip().splitlines()[-1])
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(answer["outputs"][name]), value, atol=1e-6)
    assert answer["trailing"]["x-ensemble-members"] == f"{sum(answered)}/{len(answered)}"
    assert answer["version"] == 1  # an unregistered manifest answers as version 1
    assert answer["signature_inputs"] == sorted(spec.name for spec in stack.manifest.inputs)
    assert answer["status"] == [[1, 30]]  # version 1 AVAILABLE
