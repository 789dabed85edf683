"""``ensemble demo --once``: the README's main job, end to end, as real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.testing import free_port


@pytest.mark.slow
def test_demo_trains_registers_serves_and_predicts(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("MLFLOW_TRACKING_URI")
    command = [
        sys.executable, "-m", "cli", "demo", "--once", "--members", "2", "--epochs", "3",
        "--out", str(tmp_path / "runs" / "demo"),
        "--rest-port", str(free_port()), "--grpc-port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    # The local default store was used and the ensemble is registered under the alias.
    assert (tmp_path / "mlruns.db").exists()
    assert (tmp_path / "runs" / "demo" / "model-repo" / "models.config").exists()
    assert "members answered: 2/2" in output or "members answered: 1/1" in output
    # Predictions through the gateway agree with the offline evaluation of the same ensemble.
    online = float(re.search(r"gateway accuracy (\d\.\d+)", output).group(1))  # type: ignore[union-attr]
    offline = float(re.search(r"offline accuracy (\d\.\d+)", output).group(1))  # type: ignore[union-attr]
    assert online == pytest.approx(offline, abs=1e-4)
    online_nll = float(re.search(r"gateway accuracy \S+  NLL (\d+\.\d+)", output).group(1))  # type: ignore[union-attr]
    offline_nll = float(re.search(r"offline accuracy \S+  NLL (\d+\.\d+)", output).group(1))  # type: ignore[union-attr]
    assert online_nll == pytest.approx(offline_nll, abs=1e-3)
    assert online > 0.8

    # A second run reuses the registered ensemble instead of training again.
    again = subprocess.run(
        [*command[:-4], "--rest-port", str(free_port()), "--grpc-port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "reusing the ensemble" in again.stdout
