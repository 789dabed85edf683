"""The output directory of a run: every path a part of the pipeline reads or writes.

Other parts (the registry's MLflow logging, the Kubernetes job) rely on these names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from contracts.files import atomic_write_text

if TYPE_CHECKING:
    from training.config import TrainConfig

# Keys of a member's predictions.npz: the rows it never trained on (indices into the dataset's
# frame), its answers there per output, and its answers on the test split per output.
OOF_ROWS = "oof_rows"
OOF_PREFIX = "oof/"
TEST_PREFIX = "test/"


class Layout:
    """Paths under one run's output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"

    @property
    def members(self) -> Path:
        return self.root / "members"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def models_config(self) -> Path:
        return self.models / "models.config"

    @property
    def manifest(self) -> Path:
        return self.root / "ensemble.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def member_dir(self, index: int) -> Path:
        return self.members / f"m{index}"

    def member_file(self, index: int) -> Path:
        return self.member_dir(index) / "member.json"

    def model_dir(self, model_name: str) -> Path:
        return self.models / model_name

    def member_predictions(self, index: int) -> Path:
        return self.member_dir(index) / "predictions.npz"

    def read_config(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.config.read_text()) or {}
        return data

    def load_config(self) -> TrainConfig:
        """The run's resolved config; a missing or invalid one is a one-line TrainingError."""
        from training.config import load_config
        from training.errors import TrainingError

        if not self.config.is_file():
            raise TrainingError(f"{self.config} not found: is {self.root} a training output directory?")
        return load_config(self.config)

    def write_text(self, path: Path, text: str) -> None:
        """Atomic write: parallel workers and pods may write the same file."""
        atomic_write_text(path, text)

    def write_json(self, path: Path, data: Any) -> None:
        self.write_text(path, json.dumps(data, indent=2) + "\n")
