"""A member's checkpoint and where it stands: what ``ensemble train-member --resume`` continues from.

The best-only checkpoint (``checkpoint.keras``, model and optimizer state) is written by Keras;
next to it ``checkpoint.json`` records the epoch it was taken at and its monitored value.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contracts.files import atomic_write_text
from contracts.run_layout import MemberFolder
from training.errors import TrainingError

RESUME_POINT = "checkpoint.json"


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint was taken after ``epoch`` epochs, when ``monitor`` was ``best``."""

    epoch: int
    monitor: str
    best: float


def write_resume_point(member_dir: Path, point: ResumePoint) -> None:
    atomic_write_text(member_dir / RESUME_POINT, json.dumps(asdict(point), indent=2) + "\n")


def read_resume_point(member_dir: Path, monitor: str) -> ResumePoint | None:
    """The recorded checkpoint, or None when the member never wrote one (it starts afresh).

    A checkpoint taken on another monitor, or a record without its checkpoint, is a TrainingError:
    continuing from it would compare unlike values.
    """
    record, checkpoint = member_dir / RESUME_POINT, MemberFolder(member_dir).checkpoint
    if not record.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(record.read_text())
        point = ResumePoint(int(data["epoch"]), str(data["monitor"]), float(data["best"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"cannot resume: {record} is unreadable ({exc})") from None
    if not checkpoint.is_file():
        raise TrainingError(f"cannot resume: {record} names a checkpoint, but {checkpoint} is missing")
    if point.monitor != monitor:
        raise TrainingError(
            f"cannot resume: the checkpoint was chosen on {point.monitor}, the config now monitors {monitor}"
        )
    return point


def trim_history(member_dir: Path, epochs: int) -> None:
    """Keep the first ``epochs`` rows of history.csv: the epochs after the checkpoint are trained again."""
    path = MemberFolder(member_dir).history
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[:1], [row for row in rows[1:] if row and int(row[0]) < epochs]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(header + body)


def starting_point(
    member_dir: Path, model: Any, monitor: str, *, resume: bool
) -> tuple[Any, ResumePoint | None]:
    """The model to fit and the checkpoint it continues from: with ``resume`` and a checkpoint,
    the checkpointed model (compiled, optimizer state included); otherwise ``model`` from epoch 0,
    and any earlier run's resume point is forgotten."""
    point = read_resume_point(member_dir, monitor) if resume else None
    if point is None:
        (member_dir / RESUME_POINT).unlink(missing_ok=True)
        return model, None
    import keras

    trim_history(member_dir, point.epoch)
    return keras.models.load_model(MemberFolder(member_dir).checkpoint), point
