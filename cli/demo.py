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

import numpy as np

from cli.demo_queries import (
    backend_ready,
    gateway_ready,
    grpc_predict_all,
    http_json,
    load_test_rows,
)
from contracts.run_layout import RunLayout
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


def _show_predictions(
    out_dir: Path, rest_port: int, grpc_port: int, echo: Callable[[str], None]
) -> dict[str, float]:
    from rich.console import Console
    from rich.table import Table

    from training.metrics import output_metrics

    rows = load_test_rows(out_dir)
    sample = {name: array[:5] for name, array in rows.features.items()}
    body = {"instances": [{name: array[i].tolist() for name, array in sample.items()} for i in range(5)]}
    url = f"http://127.0.0.1:{rest_port}/v1/models/{DEMO_ENSEMBLE}/labels/champion:predict"
    status, doc, headers = http_json(url, body)
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

    probs, latencies = grpc_predict_all(grpc_port, DEMO_ENSEMBLE, rows)
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
    _train_or_reuse(out_dir, tracking_uri, members=members, epochs=epochs, retrain=retrain, echo=echo)

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
    plan = _plan_services(repo, logs, tracking_uri, rest_port=rest_port, grpc_port=grpc_port)
    backend, gateway = plan.backend, plan.gateway
    with _services([backend, gateway]):
        ports = f"gRPC {plan.backend_grpc}, REST {plan.backend_rest}"
        echo(f"3. starting the local backend ({ports}) and the gateway")
        backend.start()
        backend.wait_until(lambda: backend_ready(plan.backend_rest, member_names), timeout_s=180)
        gateway.start()
        gateway.wait_until(lambda: gateway_ready(rest_port), timeout_s=60)
        echo(f"   gateway: REST http://127.0.0.1:{rest_port}  gRPC 127.0.0.1:{grpc_port}")

        echo("4. sample predictions")
        metrics = _show_predictions(out_dir, rest_port, grpc_port, echo)
        _echo_offline(manifest.metrics, echo)
        if not once:
            _serve_until_interrupted(backend, gateway, rest_port, echo)
    return metrics


def _train_or_reuse(
    out_dir: Path, tracking_uri: str, *, members: int, epochs: int, retrain: bool, echo: Callable[[str], None]
) -> None:
    """Step 1: reuse the registered demo ensemble in ``out_dir``, or train and register one."""
    reuse = (
        not retrain
        and RunLayout(out_dir).manifest.exists()
        and _registered(tracking_uri, DEMO_ENSEMBLE, "champion")
    )
    if reuse:
        echo(
            f"1. reusing the ensemble in {out_dir} (registered as {DEMO_ENSEMBLE}@champion);"
            " --retrain trains anew"
        )
        return
    echo(f"1. training a quick ensemble of {members} members on {DEMO_DATA}")
    _run_step(
        "training",
        [
            "train", "--data", DEMO_DATA, "--name", DEMO_ENSEMBLE, "--members", str(members),
            "--epochs", str(epochs), "--out", str(out_dir), "--tracking-uri", tracking_uri,
            "--register", "--alias", "champion",
        ],
        out_dir / "logs" / "train.log",
        echo,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _ServicePlan:
    """The backend and gateway the demo will start, with the backend's ports (picked, not yet bound)."""

    backend: ServiceProcess
    gateway: ServiceProcess
    backend_grpc: int
    backend_rest: int


def _plan_services(
    repo: Path, logs: Path, tracking_uri: str, *, rest_port: int, grpc_port: int
) -> _ServicePlan:
    """The local backend serving ``repo`` and the gateway in front of it; nothing is started yet."""
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
    return _ServicePlan(backend, gateway, backend_grpc, backend_rest)


def _echo_offline(manifest_metrics: dict[str, float], echo: Callable[[str], None]) -> None:
    """The accuracy and NLL training measured, to compare with what the gateway just measured."""
    offline = manifest_metrics.get("test_accuracy")
    offline_nll = manifest_metrics.get("test_nll")
    if offline is not None:
        nll_part = f"  NLL {offline_nll:.4f}" if offline_nll is not None else ""
        echo(f"  offline accuracy {offline:.4f}{nll_part}  (same ensemble, evaluated in training)")


def _serve_until_interrupted(
    backend: ServiceProcess, gateway: ServiceProcess, rest_port: int, echo: Callable[[str], None]
) -> None:
    """Keep both services up until Ctrl-C or until either exits."""
    echo(
        "\nServing until Ctrl-C. Try:\n"
        f"  curl -s http://127.0.0.1:{rest_port}/v1/models/{DEMO_ENSEMBLE}\n"
        f"  curl -s http://127.0.0.1:{rest_port}/v2/models/{DEMO_ENSEMBLE}\n"
        f"  curl -s http://127.0.0.1:{rest_port}/metrics | grep ^ensemble_\n"
    )
    with contextlib.suppress(KeyboardInterrupt):
        while backend.proc and backend.proc.poll() is None and gateway.proc and gateway.proc.poll() is None:
            time.sleep(0.5)


def default_out_dir() -> Path:
    return Path(os.environ.get("ENSEMBLE_DEMO_DIR", "runs/demo"))
