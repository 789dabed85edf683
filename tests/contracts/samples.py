"""Sample run folders for tests: records as training wrote them."""

from __future__ import annotations

from pathlib import Path

RUN_BEFORE = Path(__file__).parent / "data" / "run_before"
"""A two-member digits run (cross-fitted, uniform weights) as training wrote it before its records were
typed, paths made neutral; its SavedModels, predictions and plots are left out."""
