"""A small trained ensemble on demand, for tests across the project.

``train_tiny`` runs the real pipeline (the same ``train-member`` and ``assemble`` code as
``ensemble train``) with a configuration small enough to finish in well under a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console


def tiny_overrides(data: str, members: int, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Config overrides that keep a run tiny: narrow members, few epochs, no search."""
    return {
        "data.source": data,
        "members.count": members,
        "members.defaults.model.width": 32,
        "members.defaults.model.depth": 1,
        "members.defaults.fit.epochs": epochs,
        "members.defaults.fit.patience": max(1, epochs),
        "seed": seed,
    }


def train_tiny(
    out_dir: Path,
    data: str = "sklearn:digits",
    members: int = 3,
    epochs: int = 3,
    *,
    workers: int = 1,
    in_process: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Train a small ensemble into ``out_dir`` and return ``out_dir``.

    Afterwards ``out_dir`` holds the full layout: ``ensemble.json``, ``models/<name>-m<i>/1/``
    SavedModels, ``models/models.config``, ``report.json`` and so on. Nothing is logged to MLflow.
    ``workers=1`` trains in one worker process after another (the least contention on small
    machines); ``in_process=True`` runs the members' code in this process instead, which saves a
    TensorFlow import when the caller has TensorFlow loaded already.
    """
    from training.assemble import assemble
    from training.prepare import prepare_run, resolve_config
    from training.runner import run_members

    config = resolve_config(None, {**tiny_overrides(data, members, epochs), **(extra or {})}, None)
    out_dir = Path(out_dir)
    prepare_run(config, out_dir)
    indices = list(range(config.candidate_count))
    if in_process:
        from training.member import train_member

        for index in indices:
            train_member(out_dir, index)
    else:
        run_members(out_dir, indices, workers, Console(quiet=True))
    assemble(out_dir)
    return out_dir
