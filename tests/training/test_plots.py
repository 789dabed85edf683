"""The report's plots: axes that show the differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training import plots


@pytest.mark.parametrize(("classes", "low"), [(2, 0.5), (3, 0.3), (10, 0.1)])
def test_reliability_confidence_axis_starts_at_one_over_k(
    classes: int, low: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(classes)
    probabilities = rng.dirichlet(np.ones(classes), 300)
    labels = rng.integers(0, classes, 300)
    figures: list[Any] = []
    pyplot = plots._pyplot()
    monkeypatch.setattr(pyplot, "close", figures.append)  # keep the figure to read its axes
    plots.reliability_diagram({"ensemble": (probabilities, labels)}, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    curve, histogram = figures[0].axes
    assert curve.get_xlim()[0] == pytest.approx(low - 0.01)
    assert histogram.get_yscale() == "log"
    assert histogram.get_ylabel() == "test rows (log)"
