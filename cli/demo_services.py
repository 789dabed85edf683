"""The demo's processes: the ``ensemble`` commands it runs as steps or keeps running as services.

Every child runs through this interpreter (no venv needed on PATH), dies with the demo
(``die_with_parent``), and logs to a file under the demo's folder.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from serving.lifecycle import die_with_parent


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


def ensemble_command(*args: str) -> list[str]:
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
            ensemble_command(*self.args),
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


def run_step(title: str, args: list[str], log_path: Path, echo: Callable[[str], None]) -> None:
    echo(f"[bold]$ ensemble {' '.join(args)}[/bold]")
    started = time.monotonic()
    # Training shows its own live progress; other steps are short and go to the log.
    if args[0] == "train":
        result = subprocess.run(ensemble_command(*args), check=False, preexec_fn=die_with_parent)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            result = subprocess.run(
                ensemble_command(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                preexec_fn=die_with_parent,
            )
    if result.returncode != 0:
        where = "" if args[0] == "train" else f"; see {log_path}"
        raise DemoError(f"{title} failed with exit code {result.returncode}{where}")
    echo(f"  {title} done in {time.monotonic() - started:.1f}s")


def registered(tracking_uri: str, name: str, alias: str) -> bool:
    from registry.errors import RegistryError
    from registry.resolve import resolve_manifest

    try:
        resolve_manifest(tracking_uri, name, alias)
    except RegistryError:
        return False
    return True


@contextlib.contextmanager
def services_running(services: list[ServiceProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()
