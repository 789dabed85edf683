"""Reading a table: a bundled data set by name, or the user's CSV or Parquet file.

Pandas only, no TensorFlow; :func:`training.data.prepare` checks what comes back against the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.errors import one_line
from training.errors import DataError


@dataclass(frozen=True)
class _Bundled:
    frame: pd.DataFrame
    targets: list[str]
    inputs: dict[str, list[str]] | None


BUNDLED = ("sklearn:digits", "sklearn:breast_cancer", "sklearn:diabetes", "penguins")


def _bundled(source: str) -> _Bundled | None:
    if source == "sklearn:digits":
        from sklearn.datasets import load_digits

        digits = load_digits(as_frame=True)
        frame = digits.frame
        pixels = [c for c in frame.columns if c != "target"]
        return _Bundled(frame, ["target"], {"pixels": pixels})
    if source == "sklearn:breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.copy()
        frame["target"] = np.where(bunch.target == 1, "benign", "malignant")
        return _Bundled(frame, ["target"], None)
    if source == "sklearn:diabetes":
        from sklearn.datasets import load_diabetes

        return _Bundled(load_diabetes(as_frame=True, scaled=False).frame, ["target"], None)
    if source == "penguins":
        from palmerpenguins import load_penguins

        return _Bundled(load_penguins(), ["species"], None)
    return None


def read_table(source: str) -> tuple[pd.DataFrame, list[str], dict[str, list[str]] | None]:
    """The raw table, the set's default targets and its default input grouping."""
    bundled = _bundled(source)
    if bundled is not None:
        return bundled.frame, bundled.targets, bundled.inputs
    if source.startswith("sklearn:"):
        raise DataError(f"unknown bundled data set {source!r}; choose one of {', '.join(BUNDLED)}")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"cannot read {source}: no such file (or a bundled set: {', '.join(BUNDLED)})")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".tsv"):
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(f"cannot read {source}: use a .csv or .parquet file")
    except DataError:
        raise
    except Exception as exc:  # every reader failure is the same user problem: an unreadable file
        reason = one_line(exc)
        raise DataError(f"cannot read {source}: {reason}") from None
    if frame.empty or len(frame.columns) < 2:
        raise DataError(f"{source} has no rows or fewer than two columns")
    return frame, [], None
