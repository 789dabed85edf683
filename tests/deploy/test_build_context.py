"""What each image ships: every module a command needs is in the build, and the gateway has no training/."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_LEAVES_OUT = {"training"}
"""Top-level paths the gateway image must not ship (it never imports TensorFlow or the trainer)."""


def _shipped() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    modules = [f"{name}.py" for name in setuptools.get("py-modules", [])]
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


def _copied_by_stage() -> dict[str, set[str]]:
    """Each build stage's ``COPY`` sources from the build context (not ``--from`` another stage)."""
    stages: dict[str, set[str]] = {}
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            current = line.split()[-1]
            stages[current] = set()
        elif line.startswith("COPY ") and "--from" not in line:
            stages[current].update(src.rstrip("/") for src in line.split()[1:-1])
    return stages


def _installs(stage: str) -> bool:
    text = (ROOT / "Dockerfile").read_text()
    body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    return "pip install --no-cache-dir --no-deps ." in body


def test_every_shipped_path_reaches_the_build_context() -> None:
    blocked = [path for path in _shipped() if not _allowed(path)]
    assert not blocked, f".dockerignore keeps {blocked} out of the image build"


def test_the_trainer_copies_every_shipped_path() -> None:
    copied = _copied_by_stage()["trainer-build"]
    assert _installs("trainer-build")
    missing = [path for path in _shipped() if path.rstrip("/") not in copied]
    assert not missing, f"the trainer stage does not copy {missing}"


def test_the_gateway_copies_every_shipped_path_but_training() -> None:
    copied = _copied_by_stage()["gateway-build"]
    assert _installs("gateway-build")
    needed = [path for path in _shipped() if path.rstrip("/") not in GATEWAY_LEAVES_OUT]
    missing = [path for path in needed if path.rstrip("/") not in copied]
    assert not missing, f"the gateway stage does not copy {missing}"
    assert not copied & GATEWAY_LEAVES_OUT, "the gateway image ships training/"
    assert {"contracts", "serving", "registry", "cli"} <= copied


def test_the_gateway_commands_work_with_what_the_gateway_image_copies(tmp_path: Path) -> None:
    """Only the gateway stage's copies on the path: every gateway module and command loads from them."""
    image = tmp_path / "image"
    image.mkdir()
    for source in _copied_by_stage()["gateway-build"]:
        if "/" not in source and (
            (ROOT / source).suffix == ".py" or (ROOT / source / "__init__.py").is_file()
        ):
            (image / source).symlink_to(ROOT / source)
    script = (
        textwrap.dedent(
            """
        import importlib, pkgutil, sys

        # The checkout's editable install would find every package; the image has only its copies.
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", ""))]
        sys.path[:] = [p for p in sys.path if p not in ("", ROOT)]
        sys.path.insert(0, IMAGE)
        import cli, cli.main, registry, serving
        assert importlib.util.find_spec("training") is None
        for package in (cli, registry, serving):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                # cli.__main__ runs the command when imported; the image runs it as ``ensemble``.
                if not info.name.endswith("__main__") and ".local_server" not in info.name \
                        and ".protos." not in info.name:
                    importlib.import_module(info.name)
        import typer.main
        app = typer.main.get_command(cli.main.build_app())
        print(" ".join(sorted(app.commands)))
        """
        )
        .replace("ROOT", repr(str(ROOT)))
        .replace("IMAGE", repr(str(image)))
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    commands = set(run.stdout.split())
    assert {"serve", "sync", "promote", "backend"} <= commands
    assert not commands & {"train", "demo"}
