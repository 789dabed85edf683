"""The protocol on the gateway as a real process, in front of fake members: the same quorum and auth.

Each member runs in its own fake backend process (no TensorFlow), so members can be killed: the
v2 answers must degrade and fail exactly as the TF Serving API's do, and the probes must answer
without the bearer token that everything else needs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.manifest import Manifest
from serving.protos.inference.open_inference_grpc_pb2 import (
    ModelInferRequest,
    ServerLiveRequest,
    ServerReadyRequest,
)
from serving.protos.inference.open_inference_grpc_pb2_grpc import GRPCInferenceServiceStub
from tests.serving.gateway.test_gateway_process import deployment, offline, rows

pytestmark = pytest.mark.slow

TOKEN = {"authorization": "Bearer let-me-in"}


def _body(x: np.ndarray) -> bytes:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    return orjson.dumps({"id": "q", "inputs": [tensor]})


def _grpc_request(x: np.ndarray) -> ModelInferRequest:
    request = ModelInferRequest(model_name="toy", id="g")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def test_quorum_and_auth_hold_for_v2(tmp_path: Path) -> None:
    x = rows(4)
    with deployment(tmp_path, separate=True, env={"ENSEMBLE_AUTH_TOKEN": "let-me-in"}) as deploy:
        manifest = Manifest.load(deploy.manifest_path)
        members = [m.name for m in manifest.members]
        url = f"{deploy.url}/v2/models/toy/infer"
        with httpx.Client(timeout=10) as client:
            assert client.post(url, content=_body(x)).status_code == 401
            for probe in ("/", "/v2/health/live", "/v2/health/ready"):
                assert client.get(f"{deploy.url}{probe}").status_code == 200, probe
            assert client.get(f"{deploy.url}/v2/models/toy").status_code == 401

            full = client.post(url, content=_body(x), headers=TOKEN)
            assert full.status_code == 200, full.text
            answer = full.json()
            assert answer["id"] == "q"
            assert answer["parameters"] == {"ensemble_members": "3/3", "ensemble_manifest_version": "1"}
            (output,) = answer["outputs"]
            np.testing.assert_allclose(
                np.reshape(output["data"], output["shape"]), offline(manifest, x), atol=1e-6
            )

            deploy.kill_member(members[0])
            degraded = client.post(url, content=_body(x), headers=TOKEN).json()
            assert degraded["parameters"]["ensemble_members"] == "2/3"
            (output,) = degraded["outputs"]
            np.testing.assert_allclose(
                np.reshape(output["data"], output["shape"]),
                offline(manifest, x, answered=[False, True, True]),
                atol=1e-6,
            )

            async def over_grpc(expect_ok: bool) -> None:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.grpc_port}") as channel:
                    stub = GRPCInferenceServiceStub(channel)
                    assert (await stub.ServerLive(ServerLiveRequest(), timeout=10)).live
                    await stub.ServerReady(ServerReadyRequest(), timeout=10)  # open: no token
                    health = health_pb2_grpc.HealthStub(channel)
                    check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
                    status = (await health.Check(check, timeout=10)).status
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.ModelInfer(_grpc_request(x), timeout=10)
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    call = stub.ModelInfer(_grpc_request(x), timeout=10, metadata=tuple(TOKEN.items()))
                    if expect_ok:
                        response = await call
                        assert response.parameters["ensemble_members"].string_param == "2/3"
                        assert response.id == "g"
                        assert status == health_pb2.HealthCheckResponse.SERVING
                    else:
                        with pytest.raises(grpc.aio.AioRpcError) as caught:
                            await call
                        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                        assert "quorum needs 2 member(s)" in (caught.value.details() or "")

            asyncio.run(over_grpc(expect_ok=True))
            deploy.kill_member(members[1])
            below = client.post(url, content=_body(x), headers=TOKEN)
            assert below.status_code == 503
            assert "members answered, quorum needs 2 member(s)" in below.json()["error"]
            asyncio.run(over_grpc(expect_ok=False))
            assert client.get(f"{deploy.url}/v2/health/ready").status_code == 503


def test_the_protocol_adapters_never_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import serving.app, serving.rest.oip, serving.grpc.oip, serving.oip.rest_body\n"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)\n"
        "assert not any(m.startswith(('tritonclient', 'kserve')) for m in sys.modules)\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "clean", result.stderr[-2000:]
