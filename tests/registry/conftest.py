"""Fixtures for the registry tests: a real ``mlflow server`` on 127.0.0.1, SQLite or PostgreSQL behind it.

PostgreSQL comes from Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` are looked up on
PATH, then under ``/usr/lib/postgresql/<major>/bin`` (newest major first). ``initdb`` refuses to
run as root, so as root the cluster is created and started as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.testing import free_port

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


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow tracking server with a SQLite store and served artifacts, shared by the session.

    Tests that share it use their own ensemble names, so they do not see each other's versions.
    """
    root = tmp_path_factory.mktemp("mlflow")
    with run_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as server:
        yield server


def postgres_bin(program: str) -> str | None:
    """Path of a PostgreSQL server program: PATH first, then Debian's versioned folders."""
    found = shutil.which(program)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{program}")
    candidates.sort(key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _as_postgres_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def run_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a SQLAlchemy URL of an empty database."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server programs not installed (Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user for initdb")
    # Not under pytest's tmp folder: that one is private to the current user, and the server runs as
    # 'postgres' when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="registry-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = free_port()
    try:
        subprocess.run(
            _as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres_user(
                [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "pg.log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        try:
            import psycopg

            with psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
            ) as conn:
                conn.execute("CREATE DATABASE mlflow")
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run(
                _as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
