"""Progress files: how worker processes tell the parent what each member is doing.

A worker rewrites ``<out>/members/m<i>/progress.json`` atomically after every epoch; the parent
polls those files to draw its live display. Files work the same for local processes and for pods
sharing a volume, and need no pipe between the processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from contracts.files import atomic_write_text
from contracts.run_layout import MemberFolder

State = Literal["waiting", "starting", "training", "exporting", "done", "failed"]


@dataclass
class MemberProgress:
    """One member's state as the display shows it."""

    index: int
    state: State = "waiting"
    epoch: int = 0
    epochs: int = 0
    val_loss: float | None = None
    best_val_loss: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    val_accuracy: float | None = None
    learning_rate: float | None = None
    eta_seconds: float | None = None
    message: str = ""


def eta_text(seconds: float | None) -> str:
    """``1m05s`` / ``42s``: the time left if the member runs all its epochs."""
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def epoch_line(p: MemberProgress, label: str | None = None) -> str:
    """One log line of an epoch, in key=value form: what ``kubectl logs`` and a piped run show.
    ``label`` names the member (default ``member <index>``, as ``--index`` counts)."""
    parts = [f"{label or f'member {p.index}'}: epoch {p.epoch}/{p.epochs}"]
    for key, value in (
        ("loss", p.loss),
        ("val_loss", p.val_loss),
        ("accuracy", p.accuracy),
        ("val_accuracy", p.val_accuracy),
    ):
        if value is not None:
            parts.append(f"{key}={value:.4f}")
    if p.learning_rate is not None:
        parts.append(f"lr={p.learning_rate:.3g}")
    parts.append(f"eta={eta_text(p.eta_seconds)}")
    return " ".join(parts)


def progress_path(member_dir: Path) -> Path:
    return MemberFolder(member_dir).progress


def write_progress(member_dir: Path, progress: MemberProgress) -> None:
    atomic_write_text(progress_path(member_dir), json.dumps(asdict(progress)))


def read_progress(member_dir: Path, index: int) -> MemberProgress:
    """The last written state; ``waiting`` when the worker has not written one yet."""
    try:
        data: dict[str, Any] = json.loads(progress_path(member_dir).read_text())
        return MemberProgress(**data)
    except (OSError, ValueError, TypeError):
        return MemberProgress(index=index)
