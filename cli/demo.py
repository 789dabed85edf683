"""``ensemble demo``: the whole product on embedded defaults, end to end, on one machine.

It trains a quick ensemble (or reuses the last one), registers it in the local MLflow store and
points ``champion`` at it, syncs a TF Serving model repository, starts the local stand-in backend
and the gateway as real processes, and sends sample predictions over REST and gRPC. Every step
runs the same ``ensemble`` commands a user would type.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.demo_challenger import CHALLENGER, ChallengerWatch, next_steps, write_gateway_config
from cli.demo_queries import (
    backend_ready,
    gateway_ready,
    grpc_predict_all,
    http_json,
    load_test_rows,
)
from cli.demo_services import (
    DemoError,
    ServiceProcess,
    free_port,
    registered,
    run_step,
    services_running,
)
from contracts.run_layout import RunLayout

DEMO_ENSEMBLE = "digits"
DEMO_DATA = "sklearn:digits"


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
    run_step(
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
    config = out_dir / "gateway.yaml"
    if write_gateway_config(config, DEMO_ENSEMBLE):
        echo(f"   gateway settings: {config} (its traffic policy is re-read while the gateway runs)")
    plan = _plan_services(repo, logs, tracking_uri, config, rest_port=rest_port, grpc_port=grpc_port)
    backend, gateway = plan.backend, plan.gateway
    services = [backend, gateway]
    with services_running(services):
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
            challenger = ChallengerWatch(
                DEMO_ENSEMBLE, out_dir, tracking_uri, plan.challenger_grpc, echo, services
            )
            echo(next_steps(DEMO_ENSEMBLE, DEMO_DATA, config, tracking_uri, rest_port))
            _serve_until_interrupted(backend, gateway, rest_port, echo, challenger)
    return metrics


def _train_or_reuse(
    out_dir: Path, tracking_uri: str, *, members: int, epochs: int, retrain: bool, echo: Callable[[str], None]
) -> None:
    """Step 1: reuse the registered demo ensemble in ``out_dir``, or train and register one."""
    reuse = (
        not retrain
        and RunLayout(out_dir).manifest.exists()
        and registered(tracking_uri, DEMO_ENSEMBLE, "champion")
    )
    if reuse:
        echo(
            f"1. reusing the ensemble in {out_dir} (registered as {DEMO_ENSEMBLE}@champion);"
            " --retrain trains anew"
        )
        return
    echo(f"1. training a quick ensemble of {members} members on {DEMO_DATA}")
    run_step(
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
    challenger_grpc: int
    """Where the challenger's backend will listen, once a challenger is set."""


def _plan_services(
    repo: Path, logs: Path, tracking_uri: str, config: Path, *, rest_port: int, grpc_port: int
) -> _ServicePlan:
    """The local backend serving ``repo`` and the gateway in front of it; nothing is started yet."""
    backend_grpc, backend_rest, challenger_grpc = free_port(), free_port(), free_port()
    backend = ServiceProcess(
        "local backend",
        [
            "backend", f"--port={backend_grpc}", f"--rest_api_port={backend_rest}", "--host=127.0.0.1",
            f"--model_config_file={repo / 'models.config'}", "--model_config_file_poll_wait_seconds=5",
        ],
        logs / "backend.log",
    )  # fmt: skip
    gateway = ServiceProcess(
        "gateway",
        [
            "serve", "--config", str(config), "--tracking-uri", tracking_uri, "--ensemble", DEMO_ENSEMBLE,
            "--backend", f"127.0.0.1:{backend_grpc}",
            "--alias-backend", f"{CHALLENGER}=127.0.0.1:{challenger_grpc}", "--rest-port", str(rest_port),
            "--grpc-port", str(grpc_port), "--host", "127.0.0.1",
        ],
        logs / "gateway.log",
    )  # fmt: skip
    return _ServicePlan(backend, gateway, backend_grpc, backend_rest, challenger_grpc)


def _echo_offline(manifest_metrics: dict[str, float], echo: Callable[[str], None]) -> None:
    """The accuracy and NLL training measured, to compare with what the gateway just measured."""
    offline = manifest_metrics.get("test_accuracy")
    offline_nll = manifest_metrics.get("test_nll")
    if offline is not None:
        nll_part = f"  NLL {offline_nll:.4f}" if offline_nll is not None else ""
        echo(f"  offline accuracy {offline:.4f}{nll_part}  (same ensemble, evaluated in training)")


def _serve_until_interrupted(
    backend: ServiceProcess,
    gateway: ServiceProcess,
    rest_port: int,
    echo: Callable[[str], None],
    challenger: ChallengerWatch,
) -> None:
    """Keep both services up until Ctrl-C or until either exits; start the challenger's once set."""
    echo(
        "\nServing until Ctrl-C. Try:\n"
        f"  curl -s http://127.0.0.1:{rest_port}/v1/models/{DEMO_ENSEMBLE}\n"
        f"  curl -s http://127.0.0.1:{rest_port}/v2/models/{DEMO_ENSEMBLE}\n"
        f"  curl -s http://127.0.0.1:{rest_port}/metrics | grep ^ensemble_\n"
    )
    with contextlib.suppress(KeyboardInterrupt):
        while backend.proc and backend.proc.poll() is None and gateway.proc and gateway.proc.poll() is None:
            challenger.poll()
            time.sleep(0.5)


def default_out_dir() -> Path:
    return Path(os.environ.get("ENSEMBLE_DEMO_DIR", "runs/demo"))
