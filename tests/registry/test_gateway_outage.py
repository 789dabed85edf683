"""A gateway started while MLflow is down: it serves its last-known-good manifest, or waits for MLflow.

Real processes on 127.0.0.1: ``mlflow server`` (stopped, then brought back on the same port and
store), a fake member backend, and ``ensemble serve`` following ``champion``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from registry.tracking import record_training
from serving.protos import GetModelStatusRequest, ModelServiceStub
from serving.testing import (
    GATEWAY_READY,
    N_CLASSES,
    N_FEATURES,
    fake_backend_args,
    free_port,
    gateway_env,
    spawn_process,
    start_process,
    stop_process,
    wait_ready,
)
from tests.conftest import REPO_ROOT
from tests.registry.conftest import run_mlflow_server
from tests.registry.fakes import write_training_output
from tests.serving.gateway.test_gateway_process import offline

pytestmark = pytest.mark.slow

NAME = "outage"
# The fake member backend's signature: x float32 [n, 4] in, probabilities [n, 3] out.
SERVED_SPEC = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, N_FEATURES]}],
    "outputs": [
        {
            "name": "probabilities",
            "dtype": "float32",
            "shape": [-1, N_CLASSES],
            "kind": "probabilities",
            "target": "y",
            "classes": [str(c) for c in range(N_CLASSES)],
        }
    ],
    "combiner": {"method": "weighted_mean", "min_members": 2},
}


@contextmanager
def gateway(uri: str, backend: str, last_good: Path, ready: str = GATEWAY_READY) -> Iterator[tuple[str, int]]:
    rest, grpc_port = free_port(), free_port()
    args = [
        "-m", "cli", "serve",
        "--tracking-uri", uri, "--ensemble", NAME, "--alias", "champion",
        "--backend", backend, "--last-good-manifest", str(last_good),
        "--host", "127.0.0.1", "--rest-port", str(rest), "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    proc = spawn_process(args, env=gateway_env())
    try:
        wait_ready(proc, ready)
        yield f"http://127.0.0.1:{rest}", grpc_port
    finally:
        stop_process(proc)


def wait_for(check: object, timeout_s: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def model_status_code(grpc_port: int) -> grpc.StatusCode:
    async def ask() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = GetModelStatusRequest()
            request.model_spec.name = NAME
            try:
                await ModelServiceStub(channel).GetModelStatus(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    return asyncio.run(ask())


def test_gateway_starts_while_mlflow_is_down(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(3, N_FEATURES)).astype(np.float32)
    body = {"instances": x.tolist()}
    mlflow_port, backend_port = free_port(), free_port()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    last_good = tmp_path / "gateway-state" / "last-good.json"
    manifest = write_training_output(tmp_path / "out", NAME, members=2, weights=[0.7, 0.3], spec=SERVED_SPEC)
    backend = start_process(fake_backend_args(backend_port, [m.name for m in manifest.members]))
    address = f"127.0.0.1:{backend_port}"
    try:
        with run_mlflow_server(store, tmp_path, port=mlflow_port) as server:
            record_training(tmp_path / "out", server.uri, register=True, alias="champion")
            # A gateway that reached the registry once keeps what it served.
            with gateway(server.uri, address, last_good) as (url, _):
                assert httpx.post(f"{url}/v1/models/{NAME}:predict", json=body, timeout=10).status_code == 200
            assert last_good.is_file()
            # A registry that answers "no such ensemble" is a settings error, not an outage to wait out.
            bad_name = subprocess.run(
                [
                    sys.executable, "-m", "cli", "serve",
                    "--tracking-uri", server.uri, "--ensemble", "nosuch", "--backend", address,
                    "--rest-port", str(free_port()), "--grpc-port", str(free_port()),
                ],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert bad_name.returncode == 1
            assert "error: cannot resolve nosuch@champion" in bad_name.stderr
        uri = server.uri

        # MLflow is down now. With the saved manifest the gateway serves at once...
        with gateway(uri, address, last_good, ready="members, last-known-good manifest) on REST") as (
            url,
            grpc_port,
        ):
            answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(
                np.array(answer.json()["predictions"]), offline(manifest, x), atol=1e-6
            )
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            assert ready.json()["last_known_good"].endswith("Z")
            assert ready.json()["reason"].startswith("serving the last-known-good manifest saved")
            assert "ensemble_manifest_last_good 1.0" in httpx.get(f"{url}/metrics", timeout=10).text
            assert model_status_code(grpc_port) is grpc.StatusCode.OK

            # ...and one with nothing saved stays up, not ready, answering 503, and retrying.
            with gateway(uri, address, tmp_path / "nothing-saved.json", ready="with no manifest yet") as (
                waiting,
                waiting_grpc,
            ):
                assert httpx.get(f"{waiting}/healthz", timeout=10).status_code == 200
                not_ready = httpx.get(f"{waiting}/readyz", timeout=10)
                assert not_ready.status_code == 503
                assert "no ensemble manifest loaded yet" in not_ready.json()["reason"]
                refused = httpx.post(f"{waiting}/v1/models/{NAME}:predict", json=body, timeout=10)
                assert refused.status_code == 503
                assert "no ensemble manifest loaded yet" in refused.json()["error"]
                assert model_status_code(waiting_grpc) is grpc.StatusCode.UNAVAILABLE

                # MLflow comes back: both follow the registry again.
                with run_mlflow_server(store, tmp_path, port=mlflow_port):
                    wait_for(lambda: httpx.get(f"{waiting}/readyz", timeout=10).status_code == 200)
                    answer = httpx.post(f"{waiting}/v1/models/{NAME}:predict", json=body, timeout=10)
                    assert answer.status_code == 200, answer.text
                    np.testing.assert_allclose(
                        np.array(answer.json()["predictions"]), offline(manifest, x), atol=1e-6
                    )
                    wait_for(
                        lambda: (
                            "ensemble_manifest_last_good 0.0" in httpx.get(f"{url}/metrics", timeout=10).text
                        )
                    )
                    assert "last_known_good" not in httpx.get(f"{url}/readyz", timeout=10).json()
    finally:
        stop_process(backend)
