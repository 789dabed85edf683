"""The demo's challenger: a settings file to turn shadow and canary on, and the challenger's own backend.

The demo's gateway serves ``champion`` and ``challenger`` from ``<out>/gateway.yaml``, whose
traffic policy it re-reads while it runs. Once ``challenger`` is set in the registry, the demo
starts a backend of its own for the challenger's members, and keeps both aliases' model
repositories in step with the registry (``ensemble sync --watch``), so that registering a
challenger and promoting it need no other command.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cli.demo_services import ServiceProcess, ensemble_command, registered

CHAMPION = "champion"
CHALLENGER = "challenger"
CHECK_EVERY_S = 5.0
"""How often the demo asks the registry whether a challenger is set."""
SYNC_EVERY_S = 5.0


def write_gateway_config(path: Path, ensemble: str) -> bool:
    """Write the demo gateway's settings file unless it exists (a user's edits survive a restart)."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# The demo gateway's settings. The traffic policy is re-read while the gateway runs:\n"
        "# edit it and save, no restart (docs/gateway.md, 'Champion vs challenger').\n"
        f"aliases: [{CHAMPION}, {CHALLENGER}]\n"
        "traffic:\n"
        f"  {ensemble}:\n"
        "    shadow_fraction: 0     # 1.0: every request is also sent to the challenger\n"
        "    # canary_percent: 20   # a fifth of the users (header x-user-id) answered by it\n"
    )
    return True


def cli_command() -> str:
    """How the user runs ``ensemble`` from their shell: the command if on PATH, else this interpreter."""
    return "ensemble" if shutil.which("ensemble") else shlex.join(ensemble_command())


def next_steps(ensemble: str, data: str, config: Path, tracking_uri: str, rest_port: int) -> str:
    """The champion-vs-challenger walk-through, as commands to paste."""
    run = cli_command()
    url = f"http://127.0.0.1:{rest_port}"
    return (
        "Champion vs challenger, with this demo running:\n"
        f"  {run} train --data {data} --name {ensemble} --members 2 --epochs 1 --out runs/challenger"
        f" --tracking-uri {tracking_uri} --register --alias {CHALLENGER}\n"
        f"  then set shadow_fraction: 1.0 in {config} (no restart), send traffic, and read:\n"
        f"  curl -s {url}/v1/ensembles/{ensemble}/comparison\n"
        f"  {run} promote {ensemble} --version 2 --alias {CHAMPION} --online {url}"
        f" --tracking-uri {tracking_uri}\n"
    )


@dataclass
class ChallengerWatch:
    """Starts the challenger's backend and both aliases' syncs once ``challenger`` is set."""

    ensemble: str
    out_dir: Path
    tracking_uri: str
    backend_grpc: int
    echo: Callable[[str], None]
    services: list[ServiceProcess]
    """The demo's running services: what this starts joins them, and stops with them."""
    started: bool = field(default=False, init=False)
    _next_check: float = field(default=0.0, init=False)

    def poll(self) -> None:
        """Ask the registry (at most every CHECK_EVERY_S) and start the challenger's side once set."""
        now = time.monotonic()
        if self.started or now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        if registered(self.tracking_uri, self.ensemble, CHALLENGER):
            self.start()

    def start(self) -> None:
        logs = self.out_dir / "logs"
        repo = self.out_dir / "model-repo-challenger"
        syncs = [
            self._sync(CHAMPION, self.out_dir / "model-repo", logs),
            self._sync(CHALLENGER, repo, logs),
        ]
        backend = ServiceProcess(
            "challenger backend",
            [
                "backend", f"--port={self.backend_grpc}", f"--model_config_file={repo / 'models.config'}",
                "--host=127.0.0.1",
                f"--model_config_file_poll_wait_seconds={SYNC_EVERY_S:g}",
            ],
            logs / "backend-challenger.log",
        )  # fmt: skip
        self.started = True
        for sync in syncs:
            self.services.append(sync)
            sync.start()
        syncs[1].wait_until((repo / "models.config").is_file, timeout_s=120)
        self.services.append(backend)
        backend.start()
        pid = backend.proc.pid if backend.proc else "?"
        self.echo(
            f"challenger {self.ensemble}@{CHALLENGER} is set: its members load on a backend of their own"
            f" (gRPC 127.0.0.1:{self.backend_grpc}; `kill {pid}` fails no champion request);"
            f" both aliases are synced every {SYNC_EVERY_S:g} s (logs in {logs})"
        )
        self.echo(f"  challenger backend pid {pid}")

    def _sync(self, alias: str, repo: Path, logs: Path) -> ServiceProcess:
        return ServiceProcess(
            f"sync of {alias}",
            [
                "sync", self.ensemble, "--alias", alias, "--model-repo", str(repo),
                "--tracking-uri", self.tracking_uri, "--watch", "--interval", f"{SYNC_EVERY_S:g}",
            ],
            logs / f"sync-{alias}.log",
        )  # fmt: skip
