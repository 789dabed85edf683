"""The virtual environment that holds tritonclient and the KServe SDK, created on first use from PyPI.

It lives in ``.venv-oip-clients/`` at the repository root (ignored by git and by the image build)
and is rebuilt only when ``clients-requirements.txt`` changes: the requirements' hash is kept
inside it. A fresh build goes to a temporary folder that replaces the old one at the end, so an
interrupted build never leaves a half-installed environment behind, and a file lock keeps two
test runs in one checkout from building it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = Path(__file__).with_name("clients-requirements.txt")
VENV = REPO_ROOT / ".venv-oip-clients"
_STAMP = "requirements.sha256"
_INSTALL_TIMEOUT_S = 900


class ClientVenvError(RuntimeError):
    """The client environment could not be built; the message says which step failed and why."""


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(VENV.with_name(VENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(step: str, args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise ClientVenvError(f"{step} failed ({' '.join(args[:3])} ...):\n{result.stderr[-3000:]}")


def _build(target: Path) -> None:
    """A new environment in ``target``: with uv when the project's venv has it, else venv and pip."""
    uv = Path(sys.executable).parent / "uv"
    python = target / "bin" / "python"
    if uv.exists():
        _run(
            "creating the client venv", [str(uv), "venv", "--quiet", "--python", sys.executable, str(target)]
        )
        _run(
            "installing the clients",
            [str(uv), "pip", "install", "--quiet", "--python", str(python), "-r", str(REQUIREMENTS)],
        )
    else:
        _run("creating the client venv", [sys.executable, "-m", "venv", str(target)])
        _run(
            "installing the clients",
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        )


def client_python() -> Path:
    """The client environment's interpreter, building the environment first when it is missing or stale."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    python = VENV / "bin" / "python"

    def current() -> bool:
        stamp = VENV / _STAMP
        return python.exists() and stamp.exists() and stamp.read_text() == digest

    if current():
        return python
    with _locked():
        if current():  # another run built it while this one waited for the lock
            return python
        staging = VENV.with_name(f"{VENV.name}.build-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _build(staging)
            (staging / _STAMP).write_text(digest)
            shutil.rmtree(VENV, ignore_errors=True)
            staging.rename(VENV)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return python
