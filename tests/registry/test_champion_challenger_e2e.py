"""Champion vs challenger as a user runs it: ``ensemble serve --config`` on a registry-served ensemble.

Real processes on 127.0.0.1: ``mlflow server`` with two registered versions of a 2-member Keras
ensemble, ``champion`` on version 1 and ``challenger`` on version 2 (versions 1 and 2 of the same
member models); each alias's members synced by ``ensemble sync`` into a repository of its own and
served by its own ``ensemble backend``; ``ensemble serve --config gateway.yaml`` with a traffic
policy and ``alias_backends`` placing the challenger on its backend. Shadow is turned on by
editing the file while the gateway runs; curl sends traffic; the metrics and the comparison
endpoint show the agreement computed offline; the challenger's backend is killed and no champion
request fails; then ``ensemble promote --online`` (a process) refuses
with too little traffic, exit 1, and accepts once the window holds enough, and the alias moves.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from bench.stack import COLORS, FEATURES, MlflowServer, cli, register_tiny_versions
from contracts.comparison import ComparisonSummary
from serving.testing import free_port, spawn_process, stop_process, wait_ready
from serving.traffic.routing import ALIAS_HEADER

pytestmark = pytest.mark.slow

NAME = "champchall"  # its own name: the MLflow server is shared by the session
WINDOW = 30  # the comparison window, in requests: small, so it refills quickly
POLL_S = 0.5
BODY = json.dumps({"inputs": {"features": FEATURES, "color": COLORS}})


@dataclass
class Deployment:
    server: MlflowServer
    root: Path
    expected: dict[int, np.ndarray]
    config: Path
    document: dict[str, object]
    rest_port: int
    backend_ports: dict[str, int]
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start_backend(self, alias: str) -> None:
        repo = self.root / f"repo-{alias}"
        self.processes[alias] = spawn_process(
            [
                "-m", "cli", "backend", f"--port={self.backend_ports[alias]}", "--host=127.0.0.1",
                f"--model_config_file={repo / 'models.config'}",
            ]
        )  # fmt: skip
        wait_ready(self.processes[alias], "gRPC on", timeout_s=300)

    def edit(self, **traffic: float) -> None:
        self.document["traffic"] = {NAME: {"window_requests": WINDOW, **traffic}}
        self.config.write_text(yaml.safe_dump(self.document))


def curl(url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """``curl -i`` as a user runs it: the status, the headers (lower-cased) and the body."""
    done = subprocess.run(
        ["curl", "-s", "-i", *args, url], capture_output=True, text=True, timeout=60, check=True
    )
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def predict(deploy: Deployment, *headers: str) -> tuple[int, dict[str, str], str]:
    extra = [arg for header in headers for arg in ("-H", header)]
    return curl(f"{deploy.url}/v1/models/{NAME}:predict", "-X", "POST", "-d", BODY, *extra)


def comparison(deploy: Deployment) -> ComparisonSummary:
    return ComparisonSummary.model_validate_json(
        httpx.get(f"{deploy.url}/v1/ensembles/{NAME}/comparison").text
    )


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def deploy(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("champion-challenger")
    expected = register_tiny_versions(NAME, mlflow_server.uri, root)
    done = cli(
        "promote", NAME, "--version", "2", "--alias", "challenger", "--tracking-uri", mlflow_server.uri
    )
    assert done.returncode == 0, done.stderr
    for alias in ("champion", "challenger"):
        done = cli(
            "sync", NAME, "--alias", alias, "--model-repo", str(root / f"repo-{alias}"),
            "--tracking-uri", mlflow_server.uri,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    ports = {"champion": free_port(), "challenger": free_port()}
    document: dict[str, object] = {
        "tracking_uri": mlflow_server.uri,
        "ensemble": NAME,
        "aliases": ["champion", "challenger"],
        # Both versions' members are the same models: the challenger is placed by its alias.
        "backends": [f"127.0.0.1:{ports['champion']}"],
        "alias_backends": {"challenger": [f"127.0.0.1:{ports['challenger']}"]},
        "poll_interval_s": POLL_S,
        "rest_host": "127.0.0.1",
        "grpc_host": "127.0.0.1",
    }
    running = Deployment(mlflow_server, root, expected, root / "gateway.yaml", document, free_port(), ports)
    running.edit(shadow_fraction=0.0)
    try:
        for alias in ("champion", "challenger"):
            running.start_backend(alias)
        gateway = spawn_process(
            [
                "-m", "cli", "serve", "--config", str(running.config),
                "--rest-port", str(running.rest_port), "--grpc-port", str(free_port()),
            ]
        )  # fmt: skip
        running.processes["gateway"] = gateway
        wait_ready(gateway, "serving ensemble", timeout_s=120)
        wait_for(lambda: httpx.get(f"{running.url}/readyz").status_code == 200, "the gateway never got ready")
        yield running
    finally:
        for proc in reversed(list(running.processes.values())):
            stop_process(proc)


@pytest.mark.timeout(900)
def test_shadow_by_config_edit_comparison_dead_challenger_and_promotion_on_evidence(
    deploy: Deployment,
) -> None:
    champion, challenger = deploy.expected[1], deploy.expected[2]
    agreement = float(np.mean(np.argmax(champion, 1) == np.argmax(challenger, 1)))

    # Shadow off: the champion answers, nothing is paired.
    for _ in range(3):
        status, headers, body = predict(deploy)
        assert status == 200, body
        assert headers[ALIAS_HEADER] == "champion"
        np.testing.assert_allclose(json.loads(body)["outputs"], champion, atol=1e-5)
    assert comparison(deploy).paired == 0

    # Shadow on with one setting, without a restart.
    deploy.edit(shadow_fraction=1.0)

    def shadowed() -> bool:
        assert predict(deploy)[0] == 200
        return comparison(deploy).paired > 0

    wait_for(shadowed, "the edit was never picked up")
    for _ in range(WINDOW):
        status, headers, body = predict(deploy, "x-user-id: someone")
        assert status == 200, body
        assert headers[ALIAS_HEADER] == "champion"
        np.testing.assert_allclose(json.loads(body)["outputs"], champion, atol=1e-5)
    wait_for(lambda: comparison(deploy).compared == WINDOW, "the shadow calls never filled the window")
    summary = comparison(deploy)
    assert (summary.champion.version, summary.challenger.version) == (1, 2)
    assert summary.challenger.errors == 0
    assert summary.classification is not None
    assert summary.classification.agreement == pytest.approx(agreement, abs=1e-12)
    metrics = httpx.get(f"{deploy.url}/metrics").text
    ratio = [line for line in metrics.splitlines() if line.startswith("ensemble_comparison_agreement_ratio{")]
    assert len(ratio) == 1, metrics[-2000:]
    assert f'ensemble="{NAME}"' in ratio[0]
    assert 'champion="champion"' in ratio[0]
    assert float(ratio[0].rsplit(" ", 1)[1]) == pytest.approx(agreement, abs=1e-12)

    # The challenger's backend dies: not one champion request fails.
    challenger_backend = deploy.processes.pop("challenger")
    challenger_backend.send_signal(signal.SIGKILL)
    challenger_backend.wait(timeout=10)
    for _ in range(20):
        status, headers, body = predict(deploy)
        assert status == 200, body
        assert headers[ALIAS_HEADER] == "champion"
        np.testing.assert_allclose(json.loads(body)["outputs"], champion, atol=1e-5)
    wait_for(
        lambda: comparison(deploy).challenger.errors > 0, "the dead challenger's failures were not counted"
    )

    # Back up; the window refills with answered shadows.
    deploy.start_backend("challenger")
    online = ["promote", NAME, "--version", "2", "--alias", "champion", "--online", deploy.url]
    online += ["--min-agreement", "0", "--max-p99-ratio", "1000", "--tracking-uri", deploy.server.uri]
    refused = cli(*online, "--min-requests", str(WINDOW + 1))
    assert refused.returncode == 1, refused.stderr
    assert "online: too little traffic" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    client = MlflowClient(deploy.server.uri)
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"

    def window_clean() -> bool:
        predict(deploy)
        now = comparison(deploy)
        return now.challenger.errors == 0 and now.compared >= WINDOW

    wait_for(window_clean, "the window never refilled with answered shadows", timeout_s=120)
    accepted = cli(*online, "--min-requests", str(WINDOW))
    assert accepted.returncode == 0, accepted.stderr
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    tags = client.get_model_version(NAME, "2").tags
    recorded = json.loads(tags["gate.champion.online"])
    assert recorded["passed"] is True
    assert recorded["gateway"] == deploy.url
    shutil.rmtree(deploy.root / "repo-challenger", ignore_errors=True)
