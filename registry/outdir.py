"""Reading a training output directory: the files ``ensemble train`` writes, as typed records.

Layout (written by training)::

    <out>/config.yaml  <out>/dataset.json  <out>/ensemble.json  <out>/report.json  <out>/plots/*.png
    <out>/members/m<i>/member.json  history.csv  checkpoint.keras  tensorboard/  predictions.npz
    <out>/models/<ensemble>-m<i>/<version>/   (SavedModel)
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
from registry.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class MemberOutput:
    """One trained member: its folder, ``member.json`` and exported SavedModel."""

    index: int
    folder: Path
    info: dict[str, Any]
    saved_model: Path

    @property
    def model_name(self) -> str:
        return str(self.info["model_name"])

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.info.get("hyperparameters") or {})

    @property
    def metrics(self) -> dict[str, float]:
        return numeric_items(self.info.get("metrics") or {})

    def history(self) -> list[tuple[int, dict[str, float]]]:
        """Per-epoch metrics from ``history.csv`` as ``(step, {name: value})``, step from 'epoch'."""
        path = self.folder / "history.csv"
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

    root: Path
    manifest: Manifest
    dataset: dict[str, Any]
    members: list[MemberOutput]
    """The manifest's members, in its order: the ones served."""
    report: dict[str, Any] = field(default_factory=dict)
    trained: list[MemberOutput] = field(default_factory=list)
    """Every trained member (search trials and dropped members too), by index."""

    def status(self, member: MemberOutput) -> tuple[bool, float, str]:
        """(served, weight, why not) of a trained member, from the manifest and the report."""
        weights = {ref.name: ref.weight for ref in self.manifest.members}
        entries = {str(m.get("name")): m for m in self.report.get("members", []) if isinstance(m, dict)}
        if member.model_name in weights:
            return True, weights[member.model_name], ""
        reason = entries.get(member.model_name, {}).get("dropped_reason")
        return False, 0.0, str(reason or "not in the manifest")

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"{path} is missing: not a training output directory") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{path} is not valid JSON: {exc}") from None


def read_training_output(root: Path) -> TrainingOutput:
    """Read and check a training output directory; InvalidArgument says what is missing."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    try:
        manifest = Manifest.load(root / "ensemble.json")
    except FileNotFoundError:
        raise InvalidArgument(
            f"{root / 'ensemble.json'} is missing: not a training output directory"
        ) from None
    except ValidationError as exc:
        raise InvalidArgument(f"{root / 'ensemble.json'}: {validation_summary(exc)}") from None
    dataset = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    report = _read_json(root / "report.json") if (root / "report.json").is_file() else {}
    by_name: dict[str, MemberOutput] = {}
    for folder in sorted((root / "members").glob("m*")):
        if not (folder / "member.json").is_file():
            continue
        info = _read_json(folder / "member.json")
        saved_model = root / "models" / str(info["model_name"]) / str(info["version"])
        if not (saved_model / "saved_model.pb").is_file():
            raise InvalidArgument(f"{saved_model} has no saved_model.pb")
        by_name[str(info["model_name"])] = MemberOutput(int(info["index"]), folder, info, saved_model)
    members = []
    for ref in manifest.members:
        if ref.name not in by_name:
            raise InvalidArgument(f"manifest member {ref.name!r} has no folder under {root / 'members'}")
        members.append(by_name[ref.name])
    trained = sorted(by_name.values(), key=lambda m: m.index)
    return TrainingOutput(
        root=root, manifest=manifest, dataset=dataset, members=members, report=report, trained=trained
    )
