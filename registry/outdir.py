"""Reading a training output directory: the files ``ensemble train`` writes, as typed records.

The folder's layout and its records are :mod:`contracts.run_layout` and :mod:`contracts.run_records`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import validation_summary
from contracts.manifest import Manifest
from contracts.run_layout import MemberFolder, Record, RunLayout, read_record
from contracts.run_records import DatasetSummary, MemberRecord, Report
from registry.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class MemberOutput:
    """One trained member: its folder, ``member.json`` and exported SavedModel."""

    folder: MemberFolder
    record: MemberRecord
    saved_model: Path

    @property
    def index(self) -> int:
        return self.record.index

    @property
    def model_name(self) -> str:
        return self.record.model_name

    @property
    def metrics(self) -> dict[str, float]:
        return numeric_items(self.record.metrics)

    def history(self) -> list[tuple[int, dict[str, float]]]:
        """Per-epoch metrics from ``history.csv`` as ``(step, {name: value})``, step from 'epoch'."""
        path = self.folder.history
        if not path.is_file():
            return []
        rows: list[tuple[int, dict[str, float]]] = []
        with path.open(newline="") as handle:
            for row_number, row in enumerate(csv.DictReader(handle)):
                epoch = row.pop("epoch", None)
                step = int(float(epoch)) if epoch not in (None, "") else row_number
                rows.append((step, numeric_items(row)))
        return rows


@dataclass(frozen=True, slots=True)
class TrainingOutput:
    """Everything ``record_training`` reads from one output directory."""

    layout: RunLayout
    manifest: Manifest
    dataset: DatasetSummary | None
    """None when the folder has no dataset.json."""
    members: list[MemberOutput]
    """The manifest's members, in its order: the ones served."""
    report: Report | None = None
    """None when the folder has no report.json."""
    trained: list[MemberOutput] = field(default_factory=list)
    """Every trained member (search trials and dropped members too), by index."""

    @property
    def root(self) -> Path:
        return self.layout.root

    def status(self, member: MemberOutput) -> tuple[bool, float, str]:
        """(served, weight, why not) of a trained member, from the manifest and the report."""
        weights = {ref.name: ref.weight for ref in self.manifest.members}
        if member.model_name in weights:
            return True, weights[member.model_name], ""
        entry = self.report.member(member.model_name) if self.report is not None else None
        reason = entry.dropped_reason if entry is not None else None
        return False, 0.0, reason or "not in the manifest"


def numeric_items(values: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a flat mapping, as floats (strings from CSV included)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None or value == "":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _optional(path: Path, kind: type[Record]) -> Record | None:
    """The record, or None when the folder has none (an older run's report, a copied folder)."""
    return read_record(path, kind, error=InvalidArgument) if path.is_file() else None


def read_training_output(root: Path) -> TrainingOutput:
    """Read and check a training output directory; InvalidArgument says what is missing."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    layout = RunLayout(root)
    try:
        manifest = Manifest.load(layout.manifest)
    except FileNotFoundError:
        raise InvalidArgument(f"{layout.manifest} is missing: not a training output directory") from None
    except ValidationError as exc:
        raise InvalidArgument(f"{layout.manifest}: {validation_summary(exc)}") from None
    dataset = _optional(layout.dataset, DatasetSummary)
    report = _optional(layout.report, Report)
    by_name: dict[str, MemberOutput] = {}
    for folder in layout.member_folders():
        if not folder.record.is_file():
            continue
        record = read_record(folder.record, MemberRecord, error=InvalidArgument)
        saved_model = layout.saved_model(record.model_name, record.version)
        if not (saved_model / "saved_model.pb").is_file():
            raise InvalidArgument(f"{saved_model} has no saved_model.pb")
        by_name[record.model_name] = MemberOutput(folder, record, saved_model)
    members = []
    for ref in manifest.members:
        if ref.name not in by_name:
            raise InvalidArgument(f"manifest member {ref.name!r} has no folder under {layout.members}")
        members.append(by_name[ref.name])
    trained = sorted(by_name.values(), key=lambda m: m.index)
    return TrainingOutput(
        layout=layout, manifest=manifest, dataset=dataset, members=members, report=report, trained=trained
    )
