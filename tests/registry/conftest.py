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
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.stack import MlflowServer, run_mlflow_server
from serving.testing import free_port

__all__ = ["MlflowServer", "run_mlflow_server"]


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
