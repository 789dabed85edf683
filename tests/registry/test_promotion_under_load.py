"""Promotion and rollback under continuous REST and gRPC load, with the real chain of polls: zero failures.

Real processes on 127.0.0.1, as deployed, with shortened poll intervals:

- ``mlflow server`` holding two registered versions of a 2-member ensemble (real Keras SavedModels);
- per member, its own ``ensemble backend`` (the local stand-in for TF Serving: rereads
  ``models.config`` every second, rescans the disk every second) on its own model repository,
  filled by its own ``ensemble sync --watch``;
- ``ensemble serve`` following ``champion``, each member on its own backend.

The quorum is both members, so a single member call that fails is a failed request. Promote,
then roll back, first with immediate labels, then with ``--staged-labels``: every request must
be answered, each by one of the two ensembles exactly, and each old version must still be on
disk when the gateway has moved on (make before break), then pruned.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts import combine
from registry.sync import minimum_grace_s
from registry.tracking import record_training
from serving.protos import PredictionServiceStub, PredictRequest
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import free_port, spawn_process, stop_process, wait_ready
from tests.conftest import REPO_ROOT
from tests.registry.conftest import MlflowServer
from tests.registry.fakes import write_training_output

pytestmark = pytest.mark.slow

NAME = "underload"  # its own name: the MLflow server is shared by the session
MEMBERS = [f"{NAME}-m0", f"{NAME}-m1"]
FEATURES = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
COLORS = ["red", "blue"]
# The tiny Keras member of tests/serving/local_server/export_model.py.
SPEC = {
    "inputs": [
        {"name": "features", "dtype": "float32", "shape": [-1, 3]},
        {"name": "color", "dtype": "string", "shape": [-1]},
    ],
    "outputs": [
        {
            "name": "probabilities",
            "dtype": "float32",
            "shape": [-1, 3],
            "kind": "probabilities",
            "target": "y",
            "classes": ["0", "1", "2"],
        }
    ],
    "combiner": {"method": "weighted_mean", "min_members": 2},  # every member must answer
}


@dataclass(frozen=True)
class Version:
    """One registered ensemble version: its members' weight scales, its weights, its test NLL."""

    scales: tuple[float, float]
    weights: tuple[float, float]
    nll: float


VERSIONS = {1: Version((1.0, 2.0), (0.5, 0.5), 0.3), 2: Version((-1.5, 3.0), (0.7, 0.3), 0.2)}

# The chain of polls, shortened: sync every 0.5 s, backends reread the config every 1 s, the
# gateway polls every 0.5 s with a 3 s request deadline; 5 s allowed for loading. --backend
# keeps an old version until the new one is AVAILABLE anyway.
SYNC_INTERVAL_S = 0.5
CONFIG_POLL_S = 1
GATEWAY_POLL_S = 0.5
REQUEST_DEADLINE_S = 3.0
GRACE_S = minimum_grace_s(
    sync_interval_s=SYNC_INTERVAL_S,
    backend_config_poll_s=CONFIG_POLL_S,
    load_s=5.0,
    gateway_poll_s=GATEWAY_POLL_S,
    request_deadline_s=REQUEST_DEADLINE_S,
)
MOVE_TIMEOUT_S = 120.0

EXPORT = """
import json, sys
from pathlib import Path
import tensorflow as tf
from tests.serving.local_server.export_model import export
features, colors, answers = json.loads(sys.argv[2]), json.loads(sys.argv[3]), {}
for spec in sys.argv[4:]:
    target, _, scale = spec.rpartition(":")
    export(Path(target), float(scale))
    signature = tf.saved_model.load(target).signatures["serving_default"]
    answer = signature(features=tf.constant(features, tf.float32), color=tf.constant(colors, tf.string))
    answers[target] = answer["probabilities"].numpy().tolist()
Path(sys.argv[1]).write_text(json.dumps(answers))
"""


@dataclass
class Outcome:
    protocol: str
    ok: bool
    version: str = ""
    members: str = ""
    answer: np.ndarray | None = None
    error: str = ""


@dataclass
class Stack:
    server: MlflowServer
    repos: list[Path]
    backend_ports: list[int]
    rest_port: int
    grpc_port: int
    expected: dict[int, np.ndarray]
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    syncs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ensemble ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def register_two_versions(server: MlflowServer, root: Path) -> dict[int, np.ndarray]:
    """Export 2 members x 2 versions, register them as ensemble versions 1 and 2; their answers."""
    targets = {(v, i): root / f"export-v{v}" / f"m{i}" for v in VERSIONS for i in range(len(MEMBERS))}
    answers_file = root / "answers.json"
    subprocess.run(
        [
            sys.executable, "-c", EXPORT, str(answers_file), json.dumps(FEATURES), json.dumps(COLORS),
            *(f"{path}:{VERSIONS[v].scales[i]}" for (v, i), path in targets.items()),
        ],
        cwd=REPO_ROOT, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    answers = json.loads(answers_file.read_text())
    expected: dict[int, np.ndarray] = {}
    for version, info in VERSIONS.items():
        out = root / f"out-v{version}"
        manifest = write_training_output(
            out,
            NAME,
            members=len(MEMBERS),
            test_nll=info.nll,
            weights=list(info.weights),
            spec=SPEC,
        )
        for index, member in enumerate(MEMBERS):
            saved = out / "models" / member / "1"
            shutil.rmtree(saved)
            shutil.copytree(targets[(version, index)], saved)
        logged = record_training(out, server.uri, register=True, alias="champion" if version == 1 else None)
        assert logged.ensemble_version == version
        assert logged.member_versions == {member: version for member in MEMBERS}
        weights = combine.method_weights(manifest.combiner.method, manifest.weights)
        member_answers = [
            {"probabilities": np.asarray(answers[str(targets[(version, i)])], np.float32)}
            for i in range(len(MEMBERS))
        ]
        expected[version] = combine.combine_outputs(member_answers, weights)["probabilities"]
    assert not np.allclose(expected[1], expected[2], atol=1e-3), "the two ensembles must be told apart"
    return expected


def start_syncs(stack: Stack, *extra: str) -> None:
    for repo, port in zip(stack.repos, stack.backend_ports, strict=True):
        proc = spawn_process(
            [
                "-m", "cli", "sync", NAME, "--alias", "champion", "--model-repo", str(repo),
                "--watch", "--interval", str(SYNC_INTERVAL_S), "--grace", str(GRACE_S),
                "--backend", f"127.0.0.1:{port}", "--tracking-uri", stack.server.uri, *extra,
            ]
        )  # fmt: skip
        stack.syncs.append(proc)
    for proc in stack.syncs:
        wait_ready(proc, f"syncing {NAME}@champion", timeout_s=120)


def stop_syncs(stack: Stack) -> None:
    while stack.syncs:
        stop_process(stack.syncs.pop())


@pytest.fixture(scope="module")
def stack(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("promotion")
    expected = register_two_versions(mlflow_server, root)
    repos = [root / f"repo-{member}" for member in MEMBERS]
    deploy = Stack(mlflow_server, repos, [free_port() for _ in MEMBERS], free_port(), free_port(), expected)
    try:
        for repo in repos:  # as the init container: models.config must exist before the backend starts
            done = cli(
                "sync",
                NAME,
                "--alias",
                "champion",
                "--model-repo",
                str(repo),
                "--tracking-uri",
                mlflow_server.uri,
            )
            assert done.returncode == 0, done.stderr
        for repo, port in zip(repos, deploy.backend_ports, strict=True):
            deploy.processes.append(
                spawn_process(
                    [
                        "-m", "cli", "backend", f"--port={port}", "--host=127.0.0.1",
                        f"--model_config_file={repo / 'models.config'}",
                        f"--model_config_file_poll_wait_seconds={CONFIG_POLL_S}",
                        "--file_system_poll_wait_seconds=1",
                    ]
                )
            )  # fmt: skip
        gateway_args = [
            "-m", "cli", "serve", "--tracking-uri", mlflow_server.uri, "--ensemble", NAME,
            "--alias", "champion", "--host", "127.0.0.1",
            "--rest-port", str(deploy.rest_port), "--grpc-port", str(deploy.grpc_port),
        ]  # fmt: skip
        for member, port in zip(MEMBERS, deploy.backend_ports, strict=True):
            gateway_args += ["--member-backend", f"{member}=127.0.0.1:{port}"]
        for proc in deploy.processes:
            wait_ready(proc, "gRPC on", timeout_s=300)
        # The production breaker settings; polls shortened.
        env = {
            "ENSEMBLE_POLL_INTERVAL_S": str(GATEWAY_POLL_S),
            "ENSEMBLE_REQUEST_DEADLINE_S": str(REQUEST_DEADLINE_S),
            "ENSEMBLE_MEMBER_DEADLINE_S": "2",
        }
        gateway = spawn_process(gateway_args, env=env)
        deploy.processes.append(gateway)
        wait_ready(gateway, "serving ensemble", timeout_s=120)
        deadline = time.monotonic() + 120
        while httpx.get(f"{deploy.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.5)
        yield deploy
    finally:
        stop_syncs(deploy)
        for proc in reversed(deploy.processes):
            stop_process(proc)


def _answered(protocol: str, headers: Mapping[str, str], answer: np.ndarray) -> Outcome:
    """An answer, with the manifest version and member count its headers (or trailers) report."""
    return Outcome(
        protocol, True, headers["x-ensemble-manifest-version"], headers["x-ensemble-members"], answer
    )


async def _load(stack: Stack, stop: asyncio.Event, outcomes: list[Outcome], workers: int = 2) -> None:
    body = orjson.dumps({"inputs": {"features": FEATURES, "color": COLORS}})

    async def rest(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                response = await client.post(
                    f"{stack.url}/v1/models/{NAME}:predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                outcomes.append(Outcome("rest", False, error=repr(exc)))
                continue
            if response.status_code != 200:
                outcomes.append(Outcome("rest", False, error=f"{response.status_code} {response.text}"))
                continue
            outcomes.append(_answered("rest", response.headers, np.asarray(response.json()["outputs"])))

    async def grpc_worker(stub: PredictionServiceStub) -> None:
        request = PredictRequest()
        request.model_spec.name = NAME
        request.inputs["features"].CopyFrom(to_tensor_proto(np.asarray(FEATURES, np.float32)))
        request.inputs["color"].CopyFrom(to_tensor_proto(np.asarray(COLORS, dtype=object)))
        while not stop.is_set():
            call = stub.Predict(request, timeout=10)
            try:
                response = await call
                trailing = dict(await call.trailing_metadata() or ())
            except grpc.aio.AioRpcError as exc:
                outcomes.append(Outcome("grpc", False, error=f"{exc.code().name} {exc.details()}"))
                continue
            outcomes.append(_answered("grpc", trailing, from_tensor_proto(response.outputs["probabilities"])))

    async with (
        httpx.AsyncClient(timeout=10) as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel,
    ):
        stub = PredictionServiceStub(channel)
        await asyncio.gather(
            *(rest(client) for _ in range(workers)), *(grpc_worker(stub) for _ in range(workers))
        )


def _on_disk(stack: Stack, version: int) -> list[bool]:
    return [
        (repo / member / str(version)).is_dir() for repo, member in zip(stack.repos, MEMBERS, strict=True)
    ]


async def _move(stack: Stack, outcomes: list[Outcome], command: list[str], to: int, left: int) -> None:
    """Move the alias with the CLI; wait until the gateway answers ``to`` and ``left`` is pruned."""
    done = await asyncio.to_thread(cli, *command, "--tracking-uri", stack.server.uri)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    while not any(o.ok and o.version == str(to) for o in outcomes[-20:]):
        assert time.monotonic() < deadline, f"the gateway never switched to version {to}"
        await asyncio.sleep(0.1)
    # Make before break: the gateway has moved on, the version it left is still there.
    assert _on_disk(stack, left) == [True, True]
    while any(_on_disk(stack, left)):
        assert time.monotonic() < deadline, f"version {left} was never pruned"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # the backends unload it; the load goes on meanwhile


@pytest.mark.timeout(1800)
def test_promote_and_rollback_under_load_fail_nothing(stack: Stack) -> None:
    async def scenario(outcomes: list[Outcome]) -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(stack, stop, outcomes))
        try:
            for extra in ((), ("--staged-labels",)):
                await asyncio.to_thread(start_syncs, stack, *extra)
                await asyncio.sleep(1.0)
                await _move(
                    stack, outcomes, ["promote", NAME, "--version", "2", "--alias", "champion"], to=2, left=1
                )
                await _move(stack, outcomes, ["rollback", NAME, "--alias", "champion"], to=1, left=2)
                await asyncio.to_thread(stop_syncs, stack)
        finally:
            stop.set()
            await load

    outcomes: list[Outcome] = []
    asyncio.run(scenario(outcomes))
    failures = [o for o in outcomes if not o.ok]
    assert not failures, collections.Counter(f"{o.protocol}: {o.error[:160]}" for o in failures)
    assert len(outcomes) > 200
    assert {o.protocol for o in outcomes} == {"rest", "grpc"}
    assert {o.members for o in outcomes} == {"2/2"}
    for outcome in outcomes:
        assert outcome.answer is not None
        np.testing.assert_allclose(outcome.answer, stack.expected[int(outcome.version)], atol=1e-5)
    assert {o.version for o in outcomes} == {"1", "2"}
