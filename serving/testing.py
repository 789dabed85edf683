"""Gateway test and benchmark helpers: toy manifests, member answers known offline, processes on loopback.

The tests and ``bench/`` both start gateways and fake members (``serving.fake_backend``) with
these; member answers are computed with numpy, without TensorFlow, so the exact offline answer
is known.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from contracts.manifest import Combiner, Manifest, MemberRef, OutputSpec, TensorSpec

N_FEATURES = 4
N_CLASSES = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_manifest(
    weights: tuple[float, ...] = (0.5, 0.3, 0.2),
    *,
    name: str = "toy",
    version: int | None = 1,
    min_members: int = 2,
    min_weight: float = 0.0,
    method: str = "weighted_mean",
) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        members=[MemberRef(name=f"{name}-m{i}", version=1, weight=w) for i, w in enumerate(weights)],
        combiner=Combiner(method=method, min_members=min_members, min_weight=min_weight),  # type: ignore[arg-type]
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, N_FEATURES])],
        outputs=[
            OutputSpec(
                name="probabilities",
                dtype="float32",
                shape=[-1, N_CLASSES],
                kind="probabilities",
                target="y",
                classes=[str(c) for c in range(N_CLASSES)],
            )
        ],
    )


def member_matrix(member: str) -> np.ndarray:
    """A fixed, member-specific linear model: the 'weights' of a fake member."""
    seed = sum(member.encode()) * 7919
    return np.random.default_rng(seed).normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32)


def member_answer(member: str, x: np.ndarray) -> np.ndarray:
    """What a fake member returns for ``x``: a softmax, float32, like a Keras classifier."""
    logits = x.astype(np.float32) @ member_matrix(member)
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


def spawn_process(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start ``python args...`` (in ``cwd``, default this process's); :func:`wait_ready` waits for it."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], ready: str = "READY", timeout_s: float = 60.0) -> list[str]:
    """Read the process's output until its ``ready`` line (returns the lines so far); stop it and
    raise if it never comes."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if ready in line:
            # Keep draining output so a chatty process never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return seen
    stop_process(proc)
    raise RuntimeError(f"{proc.args!r} did not start:\n{''.join(seen)[-3000:]}")


def start_process(
    args: list[str], ready: str = "READY", timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``python args...`` from the repository root and wait for its ``ready`` line."""
    proc = spawn_process(args, env)
    wait_ready(proc, ready, timeout_s)
    return proc


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
    """Stop a process started by a test; kill it if it does not exit in time. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def fake_backend_args(
    port: int,
    models: list[str],
    *,
    delay_ms: float = 0.0,
    slow_models: list[str] | None = None,
    fail_rate: float = 0.0,
    version: int = 1,
    per_call_ms: float = 0.0,
    per_row_ms: float = 0.0,
    serial: bool = False,
    rest_port: int = 0,
) -> list[str]:
    args = [
        "-m",
        "serving.fake_backend",
        "--port",
        str(port),
        "--models",
        ",".join(models),
        "--delay-ms",
        str(delay_ms),
        "--fail-rate",
        str(fail_rate),
        "--version",
        str(version),
    ]
    if slow_models:
        args += ["--slow-models", ",".join(slow_models)]
    if per_call_ms or per_row_ms:
        args += ["--per-call-ms", str(per_call_ms), "--per-row-ms", str(per_row_ms)]
    if serial:
        args.append("--serial")
    if rest_port:
        args += ["--rest-port", str(rest_port)]
    return args


def start_fake_backend(
    port: int,
    models: list[str],
    *,
    delay_ms: float = 0.0,
    fail_rate: float = 0.0,
    version: int = 1,
    per_call_ms: float = 0.0,
    per_row_ms: float = 0.0,
    serial: bool = False,
    rest_port: int = 0,
) -> subprocess.Popen[str]:
    """A fake backend; ``per_call_ms``/``per_row_ms``/``serial`` model a GPU-like member."""
    return start_process(
        fake_backend_args(
            port,
            models,
            delay_ms=delay_ms,
            fail_rate=fail_rate,
            version=version,
            per_call_ms=per_call_ms,
            per_row_ms=per_row_ms,
            serial=serial,
            rest_port=rest_port,
        )
    )


GATEWAY_READY = "serving ensemble"


def gateway_args(
    manifest: Path, member_addresses: dict[str, str], rest_port: int, grpc_port: int
) -> list[str]:
    """``ensemble serve`` on 127.0.0.1 with one backend address per member."""
    args = [
        "-m",
        "cli",
        "serve",
        "--manifest",
        str(manifest),
        "--host",
        "127.0.0.1",
        "--rest-port",
        str(rest_port),
        "--grpc-port",
        str(grpc_port),
    ]
    for member, address in member_addresses.items():
        args += ["--member-backend", f"{member}={address}"]
    return args


def gateway_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Fast settings for tests: short deadlines, quick reload polling and breaker recovery."""
    return {
        "ENSEMBLE_MEMBER_DEADLINE_S": "1.0",
        "ENSEMBLE_POLL_INTERVAL_S": "0.2",
        "ENSEMBLE_BREAKER_FAILURES": "3",
        "ENSEMBLE_BREAKER_COOLDOWN_S": "0.3",
        **(env or {}),
    }


def start_gateway(
    manifest: Path,
    member_addresses: dict[str, str],
    rest_port: int,
    grpc_port: int,
    *,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return start_process(
        gateway_args(manifest, member_addresses, rest_port, grpc_port),
        ready=GATEWAY_READY,
        env=gateway_env(env),
    )


async def grpc_predict(channel: Any, name: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """One gRPC Predict of input ``x`` on ``channel`` (a ``grpc.aio`` channel): the
    ``probabilities`` output and the trailing metadata."""
    from serving.protos import PredictionServiceStub, PredictRequest
    from serving.tensors import from_tensor_proto, to_tensor_proto

    request = PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(to_tensor_proto(x))
    call = PredictionServiceStub(channel).Predict(request, timeout=10)
    response = await call
    trailing = dict(await call.trailing_metadata() or ())
    return from_tensor_proto(response.outputs["probabilities"]), trailing
