"""The pure decisions of a sync pass: which versions each model lists, where its labels point, the new config.

Nothing here touches the registry or the filesystem; :func:`registry.sync.sync_once` applies what
these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contracts.manifest import Manifest
from contracts.model_config import ModelEntry

LabelPolicy = Literal["immediate", "staged"]


@dataclass(slots=True)
class LabelPlan:
    """Which member versions each model lists and where each alias label points, before any download."""

    versions: dict[str, list[int]]
    labels: dict[str, dict[str, int]]
    deferred: list[str]
    """``model@label`` entries a staged pass cannot move yet."""


def plan_labels(
    manifests: Mapping[str, Manifest], previous: Mapping[str, ModelEntry], label_policy: LabelPolicy
) -> LabelPlan:
    """The versions and labels the aliases' ``manifests`` need, given the ``previous`` config's entries.

    With ``staged``, a label moves only to a version the previous config already listed; until
    then it stays where TF Serving has it loaded, and the entry is deferred.
    """
    wanted: dict[str, dict[str, int]] = {}  # model -> alias -> version
    for alias, manifest in manifests.items():
        for member in manifest.members:
            wanted.setdefault(member.name, {})[alias] = member.version
    plan = LabelPlan(versions={}, labels={}, deferred=[])
    for model, by_alias in sorted(wanted.items()):
        labels: dict[str, int] = {}
        old = previous.get(model)
        for alias, version in by_alias.items():
            if label_policy == "staged" and (old is None or version not in (old.versions or [])):
                if old is not None and alias in old.labels:
                    labels[alias] = old.labels[alias]  # stays where TF Serving has it loaded
                plan.deferred.append(f"{model}@{alias}")
            else:
                labels[alias] = version
        plan.versions[model] = sorted(set(by_alias.values()) | set(labels.values()))
        plan.labels[model] = labels
    return plan


def plan_entries(
    previous: Mapping[str, ModelEntry],
    managed: set[str],
    versions: Mapping[str, list[int]],
    labels: Mapping[str, dict[str, int]],
    repo: Path,
    base_path: str | None,
) -> list[ModelEntry]:
    """The new ``models.config``: the entries of models this sync does not manage, then its own."""
    entries = [entry for model, entry in sorted(previous.items()) if model not in managed]
    entries += [
        ModelEntry(
            name=model,
            base_path=f"{base_path.rstrip('/')}/{model}" if base_path else str(repo / model),
            versions=listed,
            labels=labels[model],
        )
        for model, listed in versions.items()
    ]
    return entries
