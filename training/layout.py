"""Training's own read of its run folder: the resolved config, as a TrainConfig.

The paths and records themselves are :mod:`contracts.run_layout` and :mod:`contracts.run_records`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts.run_layout import RunLayout
from training.errors import TrainingError

if TYPE_CHECKING:
    from training.config import TrainConfig


def load_config(layout: RunLayout) -> TrainConfig:
    """The run's resolved config; a missing or invalid one is a one-line TrainingError."""
    from training.config import load_config as load

    if not layout.config.is_file():
        raise TrainingError(f"{layout.config} not found: is {layout.root} a training output directory?")
    return load(layout.config)
