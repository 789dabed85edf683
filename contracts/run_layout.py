"""The output directory of a run: every path training writes and the registry reads, and their records.

::

    <out>/config.yaml  dataset.json  ensemble.json  report.json  plots/*.png
    <out>/members/m<i>/member.json  predictions.npz  history.csv  checkpoint.keras  tensorboard/
    <out>/models/<ensemble>-m<i>/<version>/   (SavedModel)   <out>/models/models.config

Other parts (the registry's MLflow logging, the Kubernetes job, the benchmarks) rely on these
names, so they are spelled here only. ``member.json``, ``dataset.json`` and ``report.json`` are
read and written as the typed records of :mod:`contracts.run_records`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from contracts.errors import validation_summary
from contracts.files import atomic_write_text

# Keys of a member's predictions.npz: the rows it never trained on (indices into the dataset's
# frame), its answers there per output, and its answers on the test split per output.
OOF_ROWS = "oof_rows"
OOF_PREFIX = "oof/"
TEST_PREFIX = "test/"

Record = TypeVar("Record", bound=BaseModel)


class RecordError(ValueError):
    """A run record that is missing, not JSON, or not of its record's shape; the message is one line."""


class MemberFolder:
    """Paths under one member's folder, ``<out>/members/m<i>``."""

    def __init__(self, folder: Path) -> None:
        self.root = Path(folder)

    @property
    def record(self) -> Path:
        return self.root / "member.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.npz"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.keras"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    def artifacts(self) -> list[Path]:
        """What a member's tracking run keeps: its record, history, checkpoint, predictions, logs."""
        return [self.record, self.history, self.checkpoint, self.predictions, self.tensorboard]


class RunLayout:
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

    def member(self, index: int) -> MemberFolder:
        return MemberFolder(self.members / f"m{index}")

    def member_folders(self) -> list[MemberFolder]:
        """Every member folder present, in name order (``m0``, ``m1``, ``m10``, ...)."""
        return [MemberFolder(folder) for folder in sorted(self.members.glob("m*")) if folder.is_dir()]

    def model_dir(self, model_name: str) -> Path:
        return self.models / model_name

    def saved_model(self, model_name: str, version: int) -> Path:
        return self.model_dir(model_name) / str(version)


def write_record(path: Path, record: BaseModel) -> None:
    """``record`` as indented JSON, atomically; only the fields its writer set, so a record read
    and written again keeps the keys it had."""
    data = record.model_dump(mode="python", exclude_unset=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_record(path: Path, kind: type[Record], *, error: type[Exception] = RecordError) -> Record:
    """The record in ``path``; ``error`` (each part passes its own) in one line names the file and
    the first bad field."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {validation_summary(exc, what=kind.__name__)}") from None
