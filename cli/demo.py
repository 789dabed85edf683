"""``ensemble demo``: the whole product on embedded defaults, end to end, on one machine.

It trains a quick ensemble (or reuses the last one), registers it in the local MLflow store and
points ``champion`` at it, syncs a TF Serving model repository, starts the local stand-in backend
and the gateway as real processes, and sends sample predictions over REST and gRPC. Every step
runs the same ``ensemble`` commands a user would type.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.lifecycle import die_with_parent

DEMO_ENSEMBLE = "digits"
DEMO_DATA = "sklearn:digits"


class DemoError(Exception):
    """A demo step failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another process listens on ``port``: the demo refuses it rather than measure a stranger."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port left in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so the ``finally`` blocks stop the children first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ensemble_command(*args: str) -> list[str]:
    """Run the CLI through this interpreter, so the demo works without the venv on PATH."""
    return [sys.executable, "-m", "cli", *args]


@dataclass
class ServiceProcess:
    """A long-running ``ensemble`` process with its log file, stopped gracefully."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            _ensemble_command(*self.args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # prctl only: safe between fork and exec
        )
        log.close()

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DemoError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.25)
        raise DemoError(f"{self.name} was not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_step(title: str, args: list[str], log_path: Path, echo: Callable[[str], None]) -> None:
    echo(f"[bold]$ ensemble {' '.join(args)}[/bold]")
    started = time.monotonic()
    # Training shows its own live progress; other steps are short and go to the log.
    if args[0] == "train":
        result = subprocess.run(_ensemble_command(*args), check=False, preexec_fn=die_with_parent)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            result = subprocess.run(
                _ensemble_command(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                preexec_fn=die_with_parent,
            )
    if result.returncode != 0:
        where = "" if args[0] == "train" else f"; see {log_path}"
        raise DemoError(f"{title} failed with exit code {result.returncode}{where}")
    echo(f"  {title} done in {time.monotonic() - started:.1f}s")


def _registered(tracking_uri: str, name: str, alias: str) -> bool:
    from registry.errors import RegistryError
    from registry.resolve import resolve_manifest

    try:
        resolve_manifest(tracking_uri, name, alias)
    except RegistryError:
        return False
    return True


def _http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    import httpx

    response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=10)
    return response.status_code, response.json(), dict(response.headers)


def _backend_ready(rest_port: int, members: list[str]) -> bool:
    for member in members:
        status, doc, _ = _http_json(f"http://127.0.0.1:{rest_port}/v1/models/{member}")
        states = [v.get("state") for v in doc.get("model_version_status", [])] if status == 200 else []
        if "AVAILABLE" not in states:
            return False
    return True


def _gateway_ready(rest_port: int) -> bool:
    import httpx

    return httpx.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=2).status_code == 200


@dataclass
class TestRows:
    features: dict[str, np.ndarray]
    labels: np.ndarray
    classes: list[str]


def _test_rows(out_dir: Path) -> TestRows:
    from training.config import load_config
    from training.data import prepare

    config = load_config(out_dir / "config.yaml")
    dataset = prepare(config.data, config.seed)
    target = dataset.targets[0]
    labels = dataset.labels(dataset.test_rows)[dataset.output_name(target)]
    # Sent as a client writes them: in the served shapes (a single column is one value a row).
    features = dataset.features(dataset.test_rows)
    served = {g.name: features[g.name].reshape([-1, *g.shape[1:]]) for g in dataset.inputs}
    return TestRows(served, labels, list(target.classes))


def _grpc_predict_all(grpc_port: int, rows: TestRows, batch: int = 64) -> tuple[np.ndarray, list[float]]:
    import grpc

    from serving.protos import PredictionServiceStub, PredictRequest
    from serving.tensors import from_tensor_proto, to_tensor_proto

    n = len(rows.labels)
    predictions: list[np.ndarray] = []
    latencies_ms: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = PredictionServiceStub(channel)
        for start in range(0, n, batch):
            request = PredictRequest()
            request.model_spec.name = DEMO_ENSEMBLE
            request.model_spec.signature_name = "serving_default"
            for name, array in rows.features.items():
                request.inputs[name].CopyFrom(to_tensor_proto(array[start : start + batch]))
            began = time.perf_counter()
            response = stub.Predict(request, timeout=10)
            latencies_ms.append((time.perf_counter() - began) * 1000)
            predictions.append(from_tensor_proto(response.outputs["probabilities"]))
    return np.concatenate(predictions), latencies_ms


def _show_predictions(
    out_dir: Path, rest_port: int, grpc_port: int, echo: Callable[[str], None]
) -> dict[str, float]:
    from rich.console import Console
    from rich.table import Table

    from training.metrics import output_metrics

    rows = _test_rows(out_dir)
    sample = {name: array[:5] for name, array in rows.features.items()}
    body = {"instances": [{name: array[i].tolist() for name, array in sample.items()} for i in range(5)]}
    url = f"http://127.0.0.1:{rest_port}/v1/models/{DEMO_ENSEMBLE}/labels/champion:predict"
    status, doc, headers = _http_json(url, body)
    if status != 200:
        raise DemoError(f"REST predict answered {status}: {doc}")
    table = Table(title=f"REST  POST /v1/models/{DEMO_ENSEMBLE}/labels/champion:predict  (5 test rows)")
    table.add_column("row")
    table.add_column("true digit")
    table.add_column("ensemble says")
    table.add_column("probability", justify="right")
    for i, probs in enumerate(doc["predictions"]):
        best = int(np.argmax(probs))
        table.add_row(str(i), rows.classes[int(rows.labels[i])], rows.classes[best], f"{probs[best]:.3f}")
    Console().print(table)
    echo(f"  members answered: {headers.get('x-ensemble-members', '?')}")

    probs, latencies = _grpc_predict_all(grpc_port, rows)
    metrics = output_metrics("probabilities", probs, rows.labels)
    echo(f"[bold]gRPC  PredictionService/Predict[/bold] on all {len(rows.labels)} test rows, 64 a call:")
    echo(
        f"  gateway accuracy {metrics['accuracy']:.4f}  NLL {metrics['nll']:.4f}"
        f"  (p50 {float(np.percentile(latencies, 50)):.1f} ms a call)"
    )
    return metrics


@contextlib.contextmanager
def _services(services: list[ServiceProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


def run_demo(
    out_dir: Path,
    *,
    tracking_uri: str,
    members: int,
    epochs: int,
    retrain: bool,
    once: bool,
    rest_port: int,
    grpc_port: int,
    echo: Callable[[str], None],
) -> dict[str, float]:
    """Run every step; return the metrics measured through the gateway."""
    logs = out_dir / "logs"
    repo = out_dir / "model-repo"
    reuse = (
        not retrain
        and (out_dir / "ensemble.json").exists()
        and _registered(tracking_uri, DEMO_ENSEMBLE, "champion")
    )
    if reuse:
        echo(
            f"1. reusing the ensemble in {out_dir} (registered as {DEMO_ENSEMBLE}@champion);"
            " --retrain trains anew"
        )
    else:
        echo(f"1. training a quick ensemble of {members} members on {DEMO_DATA}")
        _run_step(
            "training",
            [
                "train", "--data", DEMO_DATA, "--name", DEMO_ENSEMBLE, "--members", str(members),
                "--epochs", str(epochs), "--out", str(out_dir), "--tracking-uri", tracking_uri,
                "--register", "--alias", "champion",
            ],
            logs / "train.log",
            echo,
        )  # fmt: skip

    echo("2. syncing the TF Serving model repository from the registry")
    _run_step(
        "sync",
        [
            "sync",
            DEMO_ENSEMBLE,
            "--alias",
            "champion",
            "--model-repo",
            str(repo),
            "--tracking-uri",
            tracking_uri,
        ],
        logs / "sync.log",
        echo,
    )

    from registry.resolve import resolve_manifest

    manifest = resolve_manifest(tracking_uri, DEMO_ENSEMBLE, "champion")
    member_names = [m.name for m in manifest.members]
    backend_grpc, backend_rest = free_port(), free_port()
    backend = ServiceProcess(
        "local backend",
        [
            "backend", f"--port={backend_grpc}", f"--rest_api_port={backend_rest}",
            f"--model_config_file={repo / 'models.config'}", "--model_config_file_poll_wait_seconds=5",
        ],
        logs / "backend.log",
    )  # fmt: skip
    gateway = ServiceProcess(
        "gateway",
        [
            "serve", "--tracking-uri", tracking_uri, "--ensemble", DEMO_ENSEMBLE, "--alias", "champion",
            "--backend", f"127.0.0.1:{backend_grpc}", "--rest-port", str(rest_port),
            "--grpc-port", str(grpc_port), "--host", "127.0.0.1",
        ],
        logs / "gateway.log",
    )  # fmt: skip
    with _services([backend, gateway]):
        echo(f"3. starting the local backend (gRPC {backend_grpc}, REST {backend_rest}) and the gateway")
        backend.start()
        backend.wait_until(lambda: _backend_ready(backend_rest, member_names), timeout_s=180)
        gateway.start()
        gateway.wait_until(lambda: _gateway_ready(rest_port), timeout_s=60)
        echo(f"   gateway: REST http://127.0.0.1:{rest_port}  gRPC 127.0.0.1:{grpc_port}")

        echo("4. sample predictions")
        metrics = _show_predictions(out_dir, rest_port, grpc_port, echo)
        offline = manifest.metrics.get("test_accuracy")
        offline_nll = manifest.metrics.get("test_nll")
        if offline is not None:
            nll_part = f"  NLL {offline_nll:.4f}" if offline_nll is not None else ""
            echo(f"  offline accuracy {offline:.4f}{nll_part}  (same ensemble, evaluated in training)")
        if not once:
            echo(
                "\nServing until Ctrl-C. Try:\n"
                f"  curl -s http://127.0.0.1:{rest_port}/v1/models/{DEMO_ENSEMBLE}\n"
                f"  curl -s http://127.0.0.1:{rest_port}/v2/models/{DEMO_ENSEMBLE}\n"
                f"  curl -s http://127.0.0.1:{rest_port}/metrics | grep ^ensemble_\n"
            )
            with contextlib.suppress(KeyboardInterrupt):
                while (
                    backend.proc
                    and backend.proc.poll() is None
                    and gateway.proc
                    and gateway.proc.poll() is None
                ):
                    time.sleep(0.5)
    return metrics


def default_out_dir() -> Path:
    return Path(os.environ.get("ENSEMBLE_DEMO_DIR", "runs/demo"))
