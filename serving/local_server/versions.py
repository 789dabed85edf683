"""Which versions of a model are served: the numbered folders on disk and the version policy.

TF Serving's policies: ``latest N`` (the default, N = 1), ``specific`` versions, or ``all``. A
version folder counts once it holds a SavedModel, so one still being written is not loaded early.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path

from contracts.model_config import ModelEntry

_VERSION_DIR = re.compile(r"\d+")
_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def scan_versions(base_path: Path) -> dict[int, Path]:
    """Numbered version folders that hold a SavedModel (folders still being written are skipped)."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return {}
    return {
        int(child.name): child
        for child in children
        if _VERSION_DIR.fullmatch(child.name)
        and child.is_dir()
        and any((child / name).is_file() for name in _MODEL_FILES)
    }


def wanted_versions(entry: ModelEntry, found: Sequence[int], troubled: Collection[int] = ()) -> set[int]:
    """The versions the entry's policy serves out of those found on disk.

    Under a ``latest N`` policy the ``troubled`` versions (failing to load) stay wanted, so they are
    retried and reported, but do not count towards N: older versions are taken in their place.
    ``specific`` and ``all`` name their versions, so they have nothing to fall back to.
    """
    if entry.versions is not None:
        return set(entry.versions) & set(found)
    if entry.all_versions:
        return set(found)
    chosen: set[int] = set()
    healthy = 0
    for version in sorted(found, reverse=True):
        if healthy == (entry.num_latest or 1):
            break
        chosen.add(version)
        healthy += version not in troubled
    return chosen
