"""The promotion stack for end-to-end tests and benchmarks: MLflow, syncs, backends, a gateway, load.

The end-to-end tests and ``bench/`` both use these: the MLflow tracking server as a process on
127.0.0.1, training output directories shaped like ``ensemble train``'s (without TensorFlow), and
the production topology of a promotion (MLflow, ``ensemble sync --watch`` sidecars, one
``ensemble backend`` per member, ``ensemble serve``) with REST and gRPC load that records every
answer and every failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson

from contracts import combine
from contracts.manifest import Manifest
from contracts.run_layout import RunLayout, write_record
from contracts.run_records import (
    DatasetRows,
    DatasetSummary,
    InputSummary,
    MemberRecord,
    Report,
    ReportMember,
    ReportSplit,
    RowCounts,
    SplitSummary,
    WeightsSummary,
)
from serving.protos import PredictionServiceStub, PredictRequest
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import free_port, spawn_process, stop_process, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]

START_TIMEOUT_S = 120


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: its tracking URI and the folder with its files."""

    uri: str
    root: Path


def _wait_healthy(uri: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not become healthy:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # The server forks workers: signal its whole process group, which it leads.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def run_mlflow_server(backend_store_uri: str, root: Path, port: int | None = None) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` (proxied artifacts under ``root``) on ``port``; stop it on exit.

    ``port`` defaults to a free one; the same store, root and port again bring back the same
    server, as after an outage.
    """
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "mlflow-server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow), "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # No background job runner: the registry never submits jobs, and its processes compete for CPU.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        _wait_healthy(uri, process, log)
        yield MlflowServer(uri=uri, root=root)
    finally:
        _stop(process)


def write_training_output(
    out: Path,
    name: str = "digits",
    *,
    members: int = 2,
    test_nll: float = 0.2,
    test_fingerprint: str = "t" * 64,
    epochs: int = 3,
    payload: str = "",
    dropped: int = 0,
    weights: list[float] | None = None,
    spec: dict[str, Any] | None = None,
    member_prefix: str | None = None,
) -> Manifest:
    """Write ``out`` with ``members`` fake SavedModels; ``payload`` tells the models' bytes apart.

    ``dropped`` more members are trained but left out of the manifest (a search's trials not kept).
    ``spec`` replaces manifest fields (``inputs``, ``outputs``, ``combiner``) for members that are
    really served: the fake gateway backend's, or real SavedModels copied over the fake ones.
    Members are registered models ``<member_prefix>-m<i>`` (default: the ensemble's name).
    The records (member.json, dataset.json, report.json) are training's own, with made-up figures.
    """
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(f"name: {name}\nmembers: {members}\ntraining:\n  epochs: {epochs}\n")
    write_record(layout.dataset, _fake_dataset(test_fingerprint))
    refs = []
    report_members = []
    for index in range(members + dropped):
        record = _fake_member(layout, index, f"{member_prefix or name}-m{index}", test_nll, epochs, payload)
        kept = index < members
        weight = (weights[index] if weights else 1.0 / members) if kept else 0.0
        if kept:
            refs.append({"name": record.model_name, "version": 1, "weight": weight})
        report_members.append(
            ReportMember(
                index=index,
                name=record.model_name,
                version=1,
                fold=None,
                weight=weight,
                kept=kept,
                dropped_reason=None if kept else "not kept by the search",
                hyperparameters=record.hyperparameters,
                epochs_trained=epochs,
                metrics=record.metrics,
            )
        )
    manifest = Manifest.model_validate(
        {
            "name": name,
            "members": refs,
            "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
            "outputs": [
                {
                    "name": "probabilities",
                    "dtype": "float32",
                    "shape": [-1, 10],
                    "kind": "probabilities",
                    "target": "digit",
                    "classes": [str(c) for c in range(10)],
                }
            ],
            "metrics": {"test_nll": test_nll, "test_accuracy": 1.0 - test_nll / 2},
            "provenance": {
                "dataset": "sklearn:digits",
                "dataset_fingerprint": "f" * 64,
                "test_fingerprint": test_fingerprint,
                "targets": ["digit"],
            },
            **(spec or {}),
        }
    )
    manifest.save(layout.manifest)
    write_record(layout.report, _fake_report(layout, name, report_members, test_nll))
    layout.plots.mkdir(exist_ok=True)
    (layout.plots / "calibration.png").write_bytes(b"\x89PNG")
    return manifest


def _fake_dataset(test_fingerprint: str) -> DatasetSummary:
    return DatasetSummary(
        source="sklearn:digits",
        fingerprint="f" * 64,
        test_fingerprint=test_fingerprint,
        targets=["digit"],
        tasks={"digit": "classification"},
        classes={"digit": [str(c) for c in range(10)]},
        labels={},
        outputs={"digit": "probabilities"},
        rows=DatasetRows(total=1797, train=1257, validation=180, test=360, dropped_missing_target=0),
        inputs=[
            InputSummary(name="pixels", dtype="float32", shape=[-1, 64], kind="numeric", columns=["pixels"])
        ],
        split=SplitSummary(method="holdout", fold_rows=[]),
    )


def _fake_member(
    layout: RunLayout, index: int, model_name: str, test_nll: float, epochs: int, payload: str
) -> MemberRecord:
    """Member ``index``'s folder (record, history, checkpoint, logs) and a fake SavedModel."""
    folder = layout.member(index)
    (folder.tensorboard / "train").mkdir(parents=True, exist_ok=True)
    (folder.tensorboard / "train" / "events.out.tfevents.0").write_bytes(b"events")
    saved = layout.saved_model(model_name, 1)
    record = MemberRecord(
        index=index,
        model_name=model_name,
        version=1,
        seed=100 + index,
        hyperparameters={"units": 32 * (index + 1), "dropout": 0.1, "optimizer": {"lr": 0.001}},
        bootstrap=False,
        fold=None,
        rows=RowCounts(fit=1257, early_stopping=180, out_of_fold=180),
        metrics={"val_nll": test_nll + 0.01 * index, "test_nll": test_nll + 0.02 * index},
        best_val_loss=test_nll + 0.01 * index,
        epochs_trained=epochs,
        train_seconds=1.5,
        export_path=str(saved.resolve()),
        export_max_abs_diff=0.0,
    )
    write_record(folder.record, record)
    rows = ["epoch,loss,val_loss,lr"]
    rows += [f"{e},{1.0 / (e + 1):.4f},{1.1 / (e + 1):.4f},0.001" for e in range(epochs)]
    folder.history.write_text("\n".join(rows) + "\n")
    folder.checkpoint.write_bytes(b"keras")
    (saved / "variables").mkdir(parents=True, exist_ok=True)
    (saved / "saved_model.pb").write_bytes(f"{model_name}:{payload}".encode())
    (saved / "variables" / "variables.index").write_bytes(b"index")
    return record


def _fake_report(layout: RunLayout, name: str, members: list[ReportMember], test_nll: float) -> Report:
    served = {"test_nll": test_nll}
    return Report(
        ensemble=name,
        weights_method="uniform",
        searched=False,
        split=ReportSplit(method="holdout", folds=None),
        weights=WeightsSummary(
            served="uniform",
            note="uniform: assemble.weights is uniform",
            shrinkage=None,
            out_of_fold_rows=0,
            informative_rows=0,
            oof_loss_uniform=None,
            oof_loss_learned=None,
            learned=None,
        ),
        members=members,
        ensemble_served=served,
        ensemble_uniform=served,
        outputs=[("probabilities", "digit", "probabilities")],
        labels={},
        models_config=str(layout.models_config),
    )


# The promotion stack: a 2-member ensemble of the tiny Keras member of
# serving/local_server/tiny_model.py, registered in two versions that answer differently.
FEATURES = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
COLORS = ["red", "blue"]
TINY_SPEC: dict[str, Any] = {
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
class TinyVersion:
    """One registered ensemble version: its members' weight scales, its weights, its test NLL."""

    scales: tuple[float, float]
    weights: tuple[float, float]
    nll: float


TINY_VERSIONS = {1: TinyVersion((1.0, 2.0), (0.5, 0.5), 0.3), 2: TinyVersion((-1.5, 3.0), (0.7, 0.3), 0.2)}

# One TensorFlow start exports every member of every version and computes their answers.
_EXPORT = """
import json, sys
from pathlib import Path
import tensorflow as tf
from serving.local_server.tiny_model import export
features, colors, answers = json.loads(sys.argv[2]), json.loads(sys.argv[3]), {}
for spec in sys.argv[4:]:
    target, _, scale = spec.rpartition(":")
    export(Path(target), float(scale))
    signature = tf.saved_model.load(target).signatures["serving_default"]
    answer = signature(features=tf.constant(features, tf.float32), color=tf.constant(colors, tf.string))
    answers[target] = answer["probabilities"].numpy().tolist()
Path(sys.argv[1]).write_text(json.dumps(answers))
"""


@dataclass(frozen=True)
class PollChain:
    """The chain of polls a promotion goes through, and the grace the sync sidecars keep."""

    sync_interval_s: float
    backend_config_poll_s: float
    gateway_poll_s: float
    request_deadline_s: float
    member_deadline_s: float
    grace_s: float


@dataclass
class Outcome:
    """One request of the load: answered (with the manifest version and members it reports) or failed."""

    protocol: str
    ok: bool
    at: float
    version: str = ""
    members: str = ""
    answer: np.ndarray | None = None
    error: str = ""


@dataclass
class PromotionStack:
    """MLflow, the backends, the gateway and the sync sidecars of one served 2-member ensemble."""

    name: str
    tracking_uri: str
    chain: PollChain
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

    @property
    def members(self) -> list[str]:
        return [f"{self.name}-m{i}" for i in range(len(self.repos))]


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


def register_tiny_versions(name: str, tracking_uri: str, root: Path) -> dict[int, np.ndarray]:
    """Export 2 members x 2 versions, register them as ensemble versions 1 (``champion``) and 2.

    Both versions' members are versions 1 and 2 of ``<name>-m0`` and ``<name>-m1`` (a gateway
    places an alias's members with ``alias_backends``). Returns each version's ensemble answer to
    :data:`FEATURES` and :data:`COLORS`, computed offline.
    """
    from registry.tracking import record_training

    members = [f"{name}-m{i}" for i in range(2)]
    targets = {(v, i): root / f"export-v{v}" / f"m{i}" for v in TINY_VERSIONS for i in range(len(members))}
    answers_file = root / "answers.json"
    subprocess.run(
        [
            sys.executable, "-c", _EXPORT, str(answers_file), json.dumps(FEATURES), json.dumps(COLORS),
            *(f"{path}:{TINY_VERSIONS[v].scales[i]}" for (v, i), path in targets.items()),
        ],
        cwd=REPO_ROOT, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    answers = json.loads(answers_file.read_text())
    expected: dict[int, np.ndarray] = {}
    for version, info in TINY_VERSIONS.items():
        out = root / f"out-v{version}"
        manifest = write_training_output(
            out,
            name,
            members=len(members),
            test_nll=info.nll,
            weights=list(info.weights),
            spec=TINY_SPEC,
        )
        members = [member.name for member in manifest.members]
        for index, member in enumerate(members):
            saved = RunLayout(out).saved_model(member, 1)
            shutil.rmtree(saved)
            shutil.copytree(targets[(version, index)], saved)
        logged = record_training(out, tracking_uri, register=True, alias="champion" if version == 1 else None)
        # Each version registers a new version of every member model.
        if logged.ensemble_version != version or set(logged.member_versions.values()) != {version}:
            raise RuntimeError(f"{name} was already registered: use a fresh name or a fresh MLflow")
        weights = combine.method_weights(manifest.combiner.method, manifest.weights)
        member_answers = [
            {"probabilities": np.asarray(answers[str(targets[(version, i)])], np.float32)}
            for i in range(len(members))
        ]
        expected[version] = combine.combine_outputs(member_answers, weights)["probabilities"]
    if np.allclose(expected[1], expected[2], atol=1e-3):
        raise RuntimeError("the two ensembles must be told apart")
    return expected


def start_syncs(stack: PromotionStack, *extra: str) -> None:
    """One ``ensemble sync --watch`` per member repository, each waiting on its own backend."""
    chain = stack.chain
    for repo, port in zip(stack.repos, stack.backend_ports, strict=True):
        proc = spawn_process(
            [
                "-m", "cli", "sync", stack.name, "--alias", "champion", "--model-repo", str(repo),
                "--watch", "--interval", str(chain.sync_interval_s), "--grace", str(chain.grace_s),
                "--backend", f"127.0.0.1:{port}", "--tracking-uri", stack.tracking_uri, *extra,
            ],
            cwd=REPO_ROOT,
        )  # fmt: skip
        stack.syncs.append(proc)
    for proc in stack.syncs:
        wait_ready(proc, f"syncing {stack.name}@champion", timeout_s=120)


def stop_syncs(stack: PromotionStack) -> None:
    while stack.syncs:
        stop_process(stack.syncs.pop())


@contextmanager
def promotion_stack(
    name: str, tracking_uri: str, root: Path, chain: PollChain, expected: dict[int, np.ndarray]
) -> Iterator[PromotionStack]:
    """Backends and a ready gateway for ``name@champion``, each member on its own backend.

    The sync sidecars are not started (see :func:`start_syncs`): each repository gets one
    ``ensemble sync`` pass first, as the init container does, since the backend needs ``models.config``.
    """
    repos = [root / f"repo-{name}-m{i}" for i in range(2)]
    stack = PromotionStack(
        name, tracking_uri, chain, repos, [free_port() for _ in repos], free_port(), free_port(), expected
    )
    try:
        for repo in repos:
            done = cli(
                "sync", name, "--alias", "champion", "--model-repo", str(repo), "--tracking-uri", tracking_uri
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
        for repo, port in zip(repos, stack.backend_ports, strict=True):
            stack.processes.append(
                spawn_process(
                    [
                        "-m", "cli", "backend", f"--port={port}", "--host=127.0.0.1",
                        f"--model_config_file={repo / 'models.config'}",
                        f"--model_config_file_poll_wait_seconds={chain.backend_config_poll_s:g}",
                        "--file_system_poll_wait_seconds=1",
                    ],
                    cwd=REPO_ROOT,
                )
            )  # fmt: skip
        gateway_args = [
            "-m", "cli", "serve", "--tracking-uri", tracking_uri, "--ensemble", name,
            "--alias", "champion", "--host", "127.0.0.1",
            "--rest-port", str(stack.rest_port), "--grpc-port", str(stack.grpc_port),
        ]  # fmt: skip
        for member, port in zip(stack.members, stack.backend_ports, strict=True):
            gateway_args += ["--member-backend", f"{member}=127.0.0.1:{port}"]
        for proc in stack.processes:
            wait_ready(proc, "gRPC on", timeout_s=300)
        env = {
            "ENSEMBLE_POLL_INTERVAL_S": f"{chain.gateway_poll_s:g}",
            "ENSEMBLE_REQUEST_DEADLINE_S": f"{chain.request_deadline_s:g}",
            "ENSEMBLE_MEMBER_DEADLINE_S": f"{chain.member_deadline_s:g}",
        }
        gateway = spawn_process(gateway_args, env=env, cwd=REPO_ROOT)
        stack.processes.append(gateway)
        wait_ready(gateway, "serving ensemble", timeout_s=120)
        deadline = time.monotonic() + 120
        while httpx.get(f"{stack.url}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never became ready")
            time.sleep(0.5)
        yield stack
    finally:
        stop_syncs(stack)
        for proc in reversed(stack.processes):
            stop_process(proc)


def _answered(protocol: str, headers: Mapping[str, str], answer: np.ndarray) -> Outcome:
    """An answer, with the manifest version and member count its headers (or trailers) report."""
    return Outcome(
        protocol,
        True,
        time.monotonic(),
        headers["x-ensemble-manifest-version"],
        headers["x-ensemble-members"],
        answer,
    )


async def run_load(
    stack: PromotionStack,
    stop: asyncio.Event,
    outcomes: list[Outcome],
    workers: int = 2,
    per_worker_rps: float | None = None,
) -> None:
    """REST and gRPC predict requests (``workers`` of each) until ``stop``; every outcome is appended.

    ``per_worker_rps`` paces each worker (steady load); without it each sends as fast as answered.
    """
    body = orjson.dumps({"inputs": {"features": FEATURES, "color": COLORS}})
    period = 1.0 / per_worker_rps if per_worker_rps else 0.0

    async def pace(started: float) -> None:
        if period:
            await asyncio.sleep(max(0.0, started + period - time.monotonic()))

    async def rest(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await client.post(
                    f"{stack.url}/v1/models/{stack.name}:predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                outcomes.append(Outcome("rest", False, time.monotonic(), error=repr(exc)))
            else:
                if response.status_code != 200:
                    error = f"{response.status_code} {response.text}"
                    outcomes.append(Outcome("rest", False, time.monotonic(), error=error))
                else:
                    answer = np.asarray(response.json()["outputs"])
                    outcomes.append(_answered("rest", response.headers, answer))
            await pace(started)

    async def grpc_worker(stub: PredictionServiceStub) -> None:
        request = PredictRequest()
        request.model_spec.name = stack.name
        request.inputs["features"].CopyFrom(to_tensor_proto(np.asarray(FEATURES, np.float32)))
        request.inputs["color"].CopyFrom(to_tensor_proto(np.asarray(COLORS, dtype=object)))
        while not stop.is_set():
            started = time.monotonic()
            call = stub.Predict(request, timeout=10)
            try:
                response = await call
                trailing = dict(await call.trailing_metadata() or ())
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name} {exc.details()}"
                outcomes.append(Outcome("grpc", False, time.monotonic(), error=error))
            else:
                answer = from_tensor_proto(response.outputs["probabilities"])
                outcomes.append(_answered("grpc", trailing, answer))
            await pace(started)

    async with (
        httpx.AsyncClient(timeout=10) as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel,
    ):
        stub = PredictionServiceStub(channel)
        await asyncio.gather(
            *(rest(client) for _ in range(workers)), *(grpc_worker(stub) for _ in range(workers))
        )


def on_disk(stack: PromotionStack, version: int) -> list[bool]:
    """Whether each member repository still holds ``version``."""
    return [
        (repo / member / str(version)).is_dir()
        for repo, member in zip(stack.repos, stack.members, strict=True)
    ]


@dataclass(frozen=True)
class Move:
    """One alias move under load, timed from the command's return (the alias moved in MLflow)."""

    command: list[str]
    moved_at: float
    answering_s: float
    """From the alias move to the first answer from the new version."""
    pruned_s: float
    """From the alias move to the old version gone from every repository."""
    old_on_disk_when_switched: bool


async def move_alias(
    stack: PromotionStack, outcomes: list[Outcome], command: list[str], to: int, left: int, timeout_s: float
) -> Move:
    """Move the alias with the CLI; wait until the gateway answers ``to`` and ``left`` is pruned."""
    done = await asyncio.to_thread(cli, *command, "--tracking-uri", stack.tracking_uri)
    if done.returncode != 0:
        raise RuntimeError(f"ensemble {' '.join(command)} failed: {done.stderr}")
    moved_at = time.monotonic()
    deadline = moved_at + timeout_s
    seen = len(outcomes)
    while True:
        first = next((o for o in outcomes[seen:] if o.ok and o.version == str(to)), None)
        if first is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway never switched to version {to}")
        await asyncio.sleep(0.1)
    # Make before break: the gateway has moved on, the version it left is still there.
    kept = all(on_disk(stack, left))
    while any(on_disk(stack, left)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {left} was never pruned")
        await asyncio.sleep(0.2)
    pruned_s = time.monotonic() - moved_at
    return Move(command, moved_at, first.at - moved_at, pruned_s, kept)
