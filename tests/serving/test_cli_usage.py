"""Usage errors of ``ensemble serve`` and ``ensemble backend``: one ``error:`` line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.core
import typer.main

from cli.main import build_app


def _ensemble(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rest_port: [1\n", "error: config bad.yaml is not valid YAML (line 2)"),
        ("- a\n- b\n", "error: config bad.yaml must be a YAML mapping at the top level"),
        ("rest_port: x\n", "error: rest_port: Input should be a valid integer"),
    ],
)
def test_serve_bad_config_is_one_line_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    done = _ensemble("serve", "--config", "bad.yaml", "--backend", "127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(expected)
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--alias-backend", "challenger"], "error: --alias-backend 'challenger' must be ALIAS=HOST:PORT"),
        (
            ["--alias-backend", "challenger=nohost"],
            "error: alias_backends: backend address 'nohost' must be HOST:PORT",
        ),
        (
            ["--alias-backend", "canary=127.0.0.1:2"],
            "error: alias_backends names canary, which is not a served",
        ),
    ],
)
def test_serve_bad_alias_placement_is_one_line_exit_2(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    registry = ["--tracking-uri", "sqlite:///none.db", "--ensemble", "toy", "--alias", "champion"]
    done = _ensemble(
        "serve", *registry, "--alias", "challenger", "--backend", "127.0.0.1:1", *flags, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "none.db").exists()  # refused before anything was opened


def test_serve_missing_manifest_is_reported_before_missing_backend(tmp_path: Path) -> None:
    done = _ensemble("serve", "--manifest", "missing.json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "error: manifest missing.json not found\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--model_config_file", "nope.config"], "not found"),
        (["--model_base_path", "nowhere"], "is not a folder"),
        (["--model_base_path", ".", "--fault_config", "faults.yaml"], "--fault_config"),
    ],
)
def test_backend_bad_paths_are_one_line_before_tensorflow_loads(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    done = _ensemble("backend", *flags, cwd=tmp_path)
    assert done.returncode == 2
    # One line and nothing else: TensorFlow, once loaded, writes its CUDA probe lines to stderr first.
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --")
    assert expected in done.stderr


@pytest.mark.parametrize("command", ["serve", "backend"])
def test_help_at_80_columns_shows_every_flag_name_whole(tmp_path: Path, command: str) -> None:
    group = typer.main.get_command(build_app())
    assert isinstance(group, typer.core.TyperGroup)
    flags = [name for param in group.commands[command].params for name in param.opts if name.startswith("--")]
    done = subprocess.run(
        [sys.executable, "-m", "cli", command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr
    words = set(done.stdout.replace("/", " ").split())
    missing = [flag for flag in flags if flag not in words]
    assert not missing, done.stdout
    assert "<bool>" not in done.stdout
    assert "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
