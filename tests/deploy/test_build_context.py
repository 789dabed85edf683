"""The images install the whole project: every module and package pyproject ships is in the build."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _shipped() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    modules = [f"{name}.py" for name in setuptools["py-modules"]]
    packages = [pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]]
    return [*modules, *(f"{p}/" for p in packages), "pyproject.toml", "README.md"]


def _allowed(path: str) -> bool:
    """The .dockerignore allow-list's verdict on a top-level path (the last matching line wins)."""
    verdict = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.rstrip("/"), pattern.rstrip("/")):
            verdict = negate
    return verdict


def test_every_shipped_path_reaches_the_build_context() -> None:
    blocked = [path for path in _shipped() if not _allowed(path)]
    assert not blocked, f".dockerignore keeps {blocked} out of the image build"


def test_every_build_stage_copies_every_shipped_path() -> None:
    copies = [
        line.split()[1:-1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]
    copied = {src.rstrip("/") for sources in copies for src in sources}
    stages = sum(1 for line in (ROOT / "Dockerfile").read_text().splitlines() if line.endswith("--no-deps ."))
    assert stages == 2  # gateway and trainer both pip install the project
    missing = [path for path in _shipped() if path.rstrip("/") not in copied]
    assert not missing, f"the Dockerfile does not copy {missing}"
