"""The gateway as a real process on 127.0.0.1, in front of fake member backends (no TensorFlow).

Each member runs in its own fake backend process, so a test can kill and restart one member.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts import combine
from contracts.manifest import Manifest
from serving.protos import (
    GetModelMetadataRequest,
    GetModelStatusRequest,
    ModelServiceStub,
    PredictionServiceStub,
    PredictRequest,
    SignatureDefMap,
)
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import (
    GATEWAY_READY,
    fake_backend_args,
    free_port,
    gateway_args,
    gateway_env,
    grpc_predict,
    make_manifest,
    member_answer,
    spawn_process,
    start_process,
    stop_process,
    wait_ready,
)

pytestmark = pytest.mark.slow


def offline(manifest: Manifest, x: np.ndarray, answered: list[bool] | None = None) -> np.ndarray:
    """The ensemble answer computed offline with the shared combine functions."""
    answered = answered or [True] * len(manifest.members)
    weights = combine.method_weights(manifest.combiner.method, manifest.weights)
    used = combine.renormalized(weights, answered)[np.asarray(answered)]
    answers = [
        {"probabilities": member_answer(m.name, x)}
        for m, ok in zip(manifest.members, answered, strict=True)
        if ok
    ]
    return combine.combine_outputs(answers, used)["probabilities"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


@dataclass
class Deployment:
    """Member backends and a gateway in front of them; members share one backend unless separate."""

    manifest_path: Path
    rest_port: int
    grpc_port: int
    member_ports: dict[str, int]
    backends: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    gateway: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start_member(self, member: str) -> None:
        """(Re)start a member that has its own backend process."""
        self.backends[member] = start_process(fake_backend_args(self.member_ports[member], [member]))

    def kill_member(self, member: str) -> None:
        stop_process(self.backends.pop(member), signal.SIGKILL)

    def stop(self) -> None:
        if self.gateway is not None:
            stop_process(self.gateway)
        for proc in self.backends.values():
            stop_process(proc)


@contextlib.contextmanager
def deployment(
    tmp_path: Path,
    manifest: Manifest | None = None,
    *,
    separate: bool = False,
    delay_ms: float = 0.0,
    slow_members: list[str] | None = None,
    env: dict[str, str] | None = None,
    serial_call_ms: float = 0.0,
) -> Iterator[Deployment]:
    """Start the backends and the gateway all at once (startup is the slow part), then wait.

    ``serial_call_ms`` makes every member GPU-like: one call at a time, each taking that long.
    """
    manifest = manifest or make_manifest()
    path = tmp_path / "ensemble.json"
    manifest.save(path)
    names = [m.name for m in manifest.members]
    shared_port = free_port()
    deploy = Deployment(
        manifest_path=path,
        rest_port=free_port(),
        grpc_port=free_port(),
        member_ports={name: free_port() if separate else shared_port for name in names},
    )
    try:
        groups = [[name] for name in names] if separate else [names]
        for group in groups:
            deploy.backends[group[0] if separate else "all"] = spawn_process(
                fake_backend_args(
                    deploy.member_ports[group[0]],
                    group,
                    delay_ms=delay_ms,
                    slow_models=slow_members,
                    per_call_ms=serial_call_ms,
                    serial=bool(serial_call_ms),
                )
            )
        addresses = {name: f"127.0.0.1:{port}" for name, port in deploy.member_ports.items()}
        deploy.gateway = spawn_process(
            gateway_args(path, addresses, deploy.rest_port, deploy.grpc_port), env=gateway_env(env)
        )
        for proc in deploy.backends.values():
            wait_ready(proc)
        wait_ready(deploy.gateway, GATEWAY_READY)
        yield deploy
    finally:
        deploy.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("gateway"), env={"ENSEMBLE_MAX_BODY_BYTES": "200000"}) as deploy:
        yield deploy


def predict_rest(
    client: httpx.Client, deploy: Deployment, x: np.ndarray, path: str = "toy"
) -> httpx.Response:
    return client.post(f"{deploy.url}/v1/models/{path}:predict", json={"instances": x.tolist()})


# --- the API -------------------------------------------------------------------------------------
def test_rest_predict_matches_the_offline_ensemble(running: Deployment) -> None:
    manifest = Manifest.load(running.manifest_path)
    x = rows(6)
    with httpx.Client(timeout=10) as client:
        row = predict_rest(client, running, x)
        columnar = client.post(
            f"{running.url}/v1/models/toy/versions/1:predict", json={"inputs": {"x": x.tolist()}}
        )
    assert row.status_code == 200, row.text
    assert row.headers["x-ensemble-members"] == "3/3"
    assert row.headers["x-ensemble-manifest-version"] == "1"
    np.testing.assert_allclose(np.array(row.json()["predictions"]), offline(manifest, x), atol=1e-6)
    assert columnar.status_code == 200, columnar.text
    np.testing.assert_allclose(np.array(columnar.json()["outputs"]), offline(manifest, x), atol=1e-6)


def test_rest_status_metadata_and_errors(running: Deployment) -> None:
    with httpx.Client(timeout=10) as client:
        status = client.get(f"{running.url}/v1/models/toy")
        metadata = client.get(f"{running.url}/v1/models/toy/metadata")
        unknown_model = predict_rest(client, running, rows(1), path="nope")
        unknown_version = predict_rest(client, running, rows(1), path="toy/versions/9")
        bad_shape = client.post(f"{running.url}/v1/models/toy:predict", json={"instances": [[1.0, 2.0]]})
        bad_json = client.post(f"{running.url}/v1/models/toy:predict", content=b"{")
        too_big = client.post(f"{running.url}/v1/models/toy:predict", json={"instances": rows(5000).tolist()})
        detail = client.post(
            f"{running.url}/v1/models/toy:predict",
            json={"inputs": {"x": rows(2).tolist()}},
            headers={"x-ensemble-detail": "members"},
        )
    assert status.status_code == 200
    assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert metadata.status_code == 200
    assert metadata.json()["model_spec"]["name"] == "toy"
    assert "x" in metadata.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert unknown_model.status_code == 404
    assert unknown_version.status_code == 404
    assert bad_shape.status_code == 400
    assert "shape" in bad_shape.json()["error"]
    assert bad_json.status_code == 400
    assert too_big.status_code == 413
    assert "limit" in too_big.json()["error"]
    assert detail.status_code == 200
    outputs = detail.json()["outputs"]
    assert {"probabilities", "probabilities:spread", "probabilities:toy-m0"} <= set(outputs)


def test_comparison_of_an_ensemble_without_a_traffic_policy_is_one_line_404(running: Deployment) -> None:
    answer = httpx.get(f"{running.url}/v1/ensembles/toy/comparison", timeout=10)
    assert answer.status_code == 404
    assert answer.json() == {"error": "no traffic policy for ensemble 'toy' (policies: none)"}


def test_health_readiness_and_metrics(running: Deployment) -> None:
    with httpx.Client(timeout=10) as client:
        predict_rest(client, running, rows(1))
        assert client.get(f"{running.url}/healthz").status_code == 200
        ready = client.get(f"{running.url}/readyz")
        metrics = client.get(f"{running.url}/metrics").text
    assert ready.status_code == 200, ready.text
    for series in (
        'ensemble_requests_total{code="200",protocol="rest"}',
        "ensemble_request_duration_seconds_bucket",
        'ensemble_member_duration_seconds_count{member="toy-m0",version="1"}',
        "ensemble_members_answered_bucket",
        'ensemble_manifest_info{ensemble="toy",label="",version="1"} 1.0',
        'ensemble_manifest_reloads_total{outcome="loaded"}',
        "ensemble_in_flight_requests",
        "ensemble_disagreement_bucket",
    ):
        assert series in metrics, series


def test_grpc_predict_status_metadata_and_health(running: Deployment) -> None:
    manifest = Manifest.load(running.manifest_path)
    x = rows(3, seed=5)

    async def scenario() -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            probabilities, trailing = await grpc_predict(channel, "toy", x)
            np.testing.assert_allclose(probabilities, offline(manifest, x), atol=1e-6)
            assert trailing["x-ensemble-members"] == "3/3"

            status_request = GetModelStatusRequest()
            status_request.model_spec.name = "toy"
            status = await ModelServiceStub(channel).GetModelStatus(status_request, timeout=10)
            assert [s.version for s in status.model_version_status] == [1]

            meta_request = GetModelMetadataRequest()
            meta_request.model_spec.name = "toy"
            meta_request.metadata_field.append("signature_def")
            meta = await PredictionServiceStub(channel).GetModelMetadata(meta_request, timeout=10)
            signatures = SignatureDefMap()
            assert meta.metadata["signature_def"].Unpack(signatures)
            assert "x" in signatures.signature_def["serving_default"].inputs

            bad = PredictRequest()
            bad.model_spec.name = "nope"
            bad.inputs["x"].CopyFrom(to_tensor_proto(x))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await PredictionServiceStub(channel).Predict(bad, timeout=10)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND

            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())
    metrics = httpx.get(f"{running.url}/metrics", timeout=10).text
    assert 'ensemble_requests_total{code="OK",protocol="grpc"}' in metrics
    assert 'ensemble_requests_total{code="NOT_FOUND",protocol="grpc"}' in metrics


# --- failures under load -------------------------------------------------------------------------
async def _load(
    url: str, x: np.ndarray, stop: asyncio.Event, outcomes: list[tuple[int, str, str]], workers: int = 8
) -> None:
    body = orjson.dumps({"instances": x.tolist()})

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                response = await client.post(
                    f"{url}/v1/models/toy:predict", content=body, headers={"content-type": "application/json"}
                )
                outcomes.append(
                    (response.status_code, response.headers.get("x-ensemble-members", ""), response.text)
                )
            except httpx.HTTPError as exc:
                outcomes.append((0, "", repr(exc)))

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))


def test_killed_members_degrade_then_fail_clearly_then_recover(tmp_path: Path) -> None:
    manifest = make_manifest(min_members=2)
    x = rows(2)
    with deployment(tmp_path, manifest, separate=True) as deploy:

        async def phase(action: object, seconds: float = 1.0) -> list[tuple[int, str, str]]:
            stop = asyncio.Event()
            outcomes: list[tuple[int, str, str]] = []
            load = asyncio.create_task(_load(deploy.url, x, stop, outcomes))
            await asyncio.sleep(0.3)
            if callable(action):
                await asyncio.to_thread(action)
            await asyncio.sleep(seconds)
            stop.set()
            await load
            return outcomes

        async def scenario() -> None:
            # one member killed mid-run: quorum (2 of 3) holds, nothing fails
            degraded = await phase(lambda: deploy.kill_member("toy-m2"))
            assert degraded
            assert {code for code, _, _ in degraded} == {200}, collections.Counter(t for _, _, t in degraded)
            assert degraded[-1][1] == "2/3"
            # a second member killed: below quorum, every failure is a clear 503
            below = await phase(lambda: deploy.kill_member("toy-m1"))
            codes = collections.Counter(code for code, _, _ in below)
            assert set(codes) <= {200, 503}, codes
            assert codes[503] > 0
            failure = next(text for code, _, text in below if code == 503)
            assert "toy-m1" in orjson.loads(failure)["error"]
            assert "quorum" in orjson.loads(failure)["error"]
            # Model status, readiness and health all say what predict says: not servable.
            async with httpx.AsyncClient(timeout=10) as client:
                status = (await client.get(f"{deploy.url}/v1/models/toy")).json()["model_version_status"]
                assert [(s["version"], s["state"], s["status"]["error_code"]) for s in status] == [
                    ("1", "UNKNOWN", "UNAVAILABLE")
                ]
                assert "down: toy-m1, toy-m2" in status[0]["status"]["error_message"]
                assert (await client.get(f"{deploy.url}/readyz")).status_code == 503
            async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.grpc_port}") as channel:
                request = GetModelStatusRequest()
                request.model_spec.name = "toy"
                answer = await ModelServiceStub(channel).GetModelStatus(request, timeout=10)
                assert [(v.version, v.state) for v in answer.model_version_status] == [(1, 0)]  # UNKNOWN
            # both come back: service recovers to full answers
            deploy.start_member("toy-m1")
            deploy.start_member("toy-m2")
            recovered: list[tuple[int, str, str]] = []
            for _ in range(50):
                recovered = await phase(None, seconds=0.3)
                if recovered and recovered[-1][1] == "3/3":
                    break
            assert recovered[-1][0] == 200
            assert recovered[-1][1] == "3/3"
            # The breaker gauges follow the clock: none reads open once the members are back.
            async with httpx.AsyncClient(timeout=10) as client:
                metrics = (await client.get(f"{deploy.url}/metrics")).text
                status = (await client.get(f"{deploy.url}/v1/models/toy")).json()["model_version_status"]
            open_breakers = [
                line for line in metrics.splitlines() if line.startswith("ensemble_member_breaker_open{")
            ]
            assert open_breakers
            assert all(line.endswith(" 0.0") for line in open_breakers), open_breakers
            assert status[0]["state"] == "AVAILABLE"

        asyncio.run(scenario())
        with httpx.Client(timeout=10) as client:
            answer = predict_rest(client, deploy, x).json()["predictions"]
        np.testing.assert_allclose(np.array(answer), offline(manifest, x), atol=1e-6)


def test_straggler_is_cut_off_by_the_member_deadline(tmp_path: Path) -> None:
    manifest = make_manifest(min_members=2)
    x = rows(3)
    with (
        deployment(tmp_path, manifest, delay_ms=5000, slow_members=["toy-m1"]) as deploy,
        httpx.Client(timeout=10) as client,
    ):
        response = predict_rest(client, deploy, x)
        metrics = client.get(f"{deploy.url}/metrics").text
    assert response.status_code == 200, response.text
    assert response.headers["x-ensemble-members"] == "2/3"
    np.testing.assert_allclose(
        np.array(response.json()["predictions"]), offline(manifest, x, [True, False, True]), atol=1e-6
    )
    assert 'ensemble_member_failures_total{member="toy-m1",reason="deadline",version="1"} 1.0' in metrics


def test_manifest_moving_under_load_fails_nothing(tmp_path: Path) -> None:
    old = make_manifest(version=1)
    new = make_manifest((0.1, 0.1, 0.8), version=2)
    x = rows(2)
    with deployment(tmp_path, old) as deploy:

        async def scenario() -> list[tuple[int, str, str]]:
            stop = asyncio.Event()
            outcomes: list[tuple[int, str, str]] = []
            load = asyncio.create_task(_load(deploy.url, x, stop, outcomes))
            await asyncio.sleep(0.5)
            new.save(deploy.manifest_path)
            await asyncio.sleep(1.5)
            stop.set()
            await load
            return outcomes

        outcomes = asyncio.run(scenario())
    assert outcomes
    assert {code for code, _, _ in outcomes} == {200}
    answers = [np.array(orjson.loads(text)["predictions"]) for _, _, text in outcomes]
    old_answer, new_answer = offline(old, x), offline(new, x)
    kinds = [_which(a, old_answer, new_answer) for a in answers]
    assert "?" not in kinds
    assert kinds[0] == "old"
    assert kinds[-1] == "new"
    # once switched, never back
    assert kinds == sorted(kinds, key=lambda k: k == "new")


def test_gpu_like_fake_member_executes_one_call_at_a_time(tmp_path: Path) -> None:
    # The benchmark's GPU-like members rely on this: concurrent calls to one model queue.
    manifest = make_manifest()
    with deployment(tmp_path, manifest, serial_call_ms=150) as deploy:
        member = manifest.members[0].name

        async def three_at_once() -> float:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.member_ports[member]}") as channel:
                stub = PredictionServiceStub(channel)
                request = PredictRequest()
                request.model_spec.name = member
                request.inputs["x"].CopyFrom(to_tensor_proto(rows(1)))
                started = time.perf_counter()
                await asyncio.gather(*(stub.Predict(request, timeout=10) for _ in range(3)))
                return time.perf_counter() - started

        elapsed = asyncio.run(three_at_once())
    assert elapsed >= 3 * 0.150 * 0.95  # in turn, never side by side


def test_micro_batching_under_concurrent_grpc_load(tmp_path: Path) -> None:
    manifest = make_manifest()
    inputs = [rows(1 + i % 3, seed=i) for i in range(24)]
    env = {"ENSEMBLE_BATCHING": "true", "ENSEMBLE_MAX_DELAY_MS": "5"}
    with deployment(tmp_path, manifest, serial_call_ms=40, env=env) as deploy:

        async def burst() -> list[np.ndarray]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.grpc_port}") as channel:
                stub = PredictionServiceStub(channel)

                async def one(x: np.ndarray) -> np.ndarray:
                    request = PredictRequest()
                    request.model_spec.name = "toy"
                    request.inputs["x"].CopyFrom(to_tensor_proto(x))
                    response = await stub.Predict(request, timeout=20)
                    return from_tensor_proto(response.outputs["probabilities"])

                return await asyncio.gather(*(one(x) for x in inputs))

        answers = asyncio.run(burst())
        metrics = httpx.get(f"{deploy.url}/metrics", timeout=10).text
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, offline(manifest, x), atol=1e-6)
    requests, batches = (
        _metric(metrics, "ensemble_batch_requests_sum"),
        _metric(metrics, "ensemble_batch_requests_count"),
    )
    assert requests == len(inputs)
    assert batches < len(inputs) / 2  # coalesced: members that take one call at a time set the pace


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _which(answer: np.ndarray, old: np.ndarray, new: np.ndarray) -> str:
    if np.allclose(answer, old, atol=1e-6):
        return "old"
    return "new" if np.allclose(answer, new, atol=1e-6) else "?"


def test_sigterm_under_load_finishes_everything_accepted(tmp_path: Path) -> None:
    manifest = make_manifest()
    x = rows(1)
    with deployment(tmp_path, manifest, delay_ms=400) as deploy:
        assert deploy.gateway is not None

        async def scenario() -> tuple[list[int], list[str]]:
            body = orjson.dumps({"instances": x.tolist()})
            async with httpx.AsyncClient(timeout=10) as client:
                rest = [
                    asyncio.create_task(client.post(f"{deploy.url}/v1/models/toy:predict", content=body))
                    for _ in range(12)
                ]
                async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.grpc_port}") as channel:
                    request = PredictRequest()
                    request.model_spec.name = "toy"
                    request.inputs["x"].CopyFrom(to_tensor_proto(x))
                    stub = PredictionServiceStub(channel)
                    calls = [asyncio.ensure_future(stub.Predict(request, timeout=10)) for _ in range(12)]
                    await asyncio.sleep(0.2)  # all accepted and waiting on the slow members
                    assert deploy.gateway is not None
                    deploy.gateway.send_signal(signal.SIGTERM)
                    grpc_results = await asyncio.gather(*calls, return_exceptions=True)
                rest_results = await asyncio.gather(*rest, return_exceptions=True)
            codes = [r.status_code if isinstance(r, httpx.Response) else 0 for r in rest_results]
            grpc_outcomes = [type(r).__name__ for r in grpc_results]
            return codes, grpc_outcomes

        codes, grpc_outcomes = asyncio.run(scenario())
        exit_code = deploy.gateway.wait(timeout=20)
        deploy.gateway = None
        assert codes == [200] * 12
        assert grpc_outcomes == ["PredictResponse"] * 12
        assert exit_code == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{deploy.url}/healthz", timeout=2)


def test_bearer_token_on_rest_and_grpc(tmp_path: Path) -> None:
    x = rows(1)
    with deployment(tmp_path, env={"ENSEMBLE_AUTH_TOKEN": "let-me-in"}) as deploy:
        with httpx.Client(timeout=10) as client:
            missing = predict_rest(client, deploy, x)
            wrong = client.post(
                f"{deploy.url}/v1/models/toy:predict",
                json={"instances": x.tolist()},
                headers={"authorization": "Bearer nope"},
            )
            right = client.post(
                f"{deploy.url}/v1/models/toy:predict",
                json={"instances": x.tolist()},
                headers={"authorization": "Bearer let-me-in"},
            )
            health = client.get(f"{deploy.url}/healthz")
        assert (missing.status_code, wrong.status_code, right.status_code, health.status_code) == (
            401,
            401,
            200,
            200,
        )
        assert missing.json() == {"error": "missing or wrong bearer token"}

        async def grpc_calls() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{deploy.grpc_port}") as channel:
                request = PredictRequest()
                request.model_spec.name = "toy"
                request.inputs["x"].CopyFrom(to_tensor_proto(x))
                stub = PredictionServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Predict(request, timeout=10)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
                await stub.Predict(request, timeout=10, metadata=(("authorization", "Bearer let-me-in"),))

        asyncio.run(grpc_calls())


@pytest.mark.parametrize("taken", ["rest", "grpc"])
def test_a_port_another_process_holds_is_one_line_and_exit_1(tmp_path: Path, taken: str) -> None:
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(make_manifest().model_dump_json())
    rest_port, grpc_port = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", rest_port if taken == "rest" else grpc_port))
        holder.listen()
        members = {"toy-m0": "127.0.0.1:1", "toy-m1": "127.0.0.1:1", "toy-m2": "127.0.0.1:1"}
        result = subprocess.run(
            [sys.executable, *gateway_args(manifest_path, members, rest_port, grpc_port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    expected = (
        f"error: cannot listen for REST on 127.0.0.1:{rest_port}: Address already in use"
        if taken == "rest"
        else f"error: cannot listen for gRPC on 127.0.0.1:{grpc_port}"
    )
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (1, expected)
    assert "Traceback" not in result.stderr


def test_gateway_never_imports_tensorflow() -> None:
    code = (
        "import sys, asyncio\n"
        "from serving.settings import GatewaySettings\n"
        "import serving.app, cli.serving, serving.ensemble, serving.backends\n"
        "import serving.rest, serving.grpc\n"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "clean", result.stderr[-2000:]


def test_real_prometheus_scrapes_the_metrics(running: Deployment, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus')")
    with httpx.Client(timeout=10) as client:
        assert predict_rest(client, running, rows(2)).status_code == 200
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running.rest_port}']}}]\n"
    )
    web_port = free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        found: dict[str, list[object]] = {}
        deadline = time.monotonic() + 60
        query = 'up{job="gateway"} or ensemble_requests_total or ensemble_manifest_info'
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{web_port}/api/v1/query", params={"query": query}, timeout=5
                ).json()
            except httpx.HTTPError:
                continue
            found = {}
            for series in answer.get("data", {}).get("result", []):
                found.setdefault(series["metric"]["__name__"], []).append(series)
            if {"up", "ensemble_requests_total", "ensemble_manifest_info"} <= set(found):
                break
        assert {"up", "ensemble_requests_total", "ensemble_manifest_info"} <= set(found), found
        assert found["up"][0]["value"][1] == "1"  # type: ignore[index]
        labels = [s["metric"] for s in found["ensemble_requests_total"]]  # type: ignore[index]
        assert any(m.get("protocol") == "rest" and m.get("code") == "200" for m in labels), labels
    finally:
        stop_process(proc)
