"""hadolint on the Dockerfile and yamllint on every YAML file of the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKERFILE, INSTALL_HINT, ROOT, find_tool


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found: {INSTALL_HINT[name]}")
    return path


def yaml_files() -> list[Path]:
    """Every YAML file git knows of (tracked or not ignored), so new files are linted too."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yaml", "*.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.skip("not a git checkout: cannot list the repository's YAML files")
    return [ROOT / line for line in result.stdout.splitlines() if (ROOT / line).is_file()]


def test_hadolint_is_clean() -> None:
    hadolint = _tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the check above: hadolint really runs and reports."""
    hadolint = _tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_yamllint_is_clean_on_every_yaml_file() -> None:
    yamllint = _tool("yamllint")
    files = yaml_files()
    assert any(f.name == "docker-compose.yaml" for f in files)
    result = subprocess.run(
        [yamllint, "--strict", "-f", "parsable", "-c", str(ROOT / ".yamllint.yaml"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
