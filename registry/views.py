"""Read-only views of the registry for ``ensemble registry list`` and ``show``: plain records, no printing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contracts import tags as tag
from registry.client import translated
from registry.resolve import require_ensemble

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One registered model: an ensemble or a member."""

    name: str
    kind: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    updated: str


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One registered version with what its tags say (members, metrics, test data)."""

    version: int
    aliases: list[str]
    created: str
    run_id: str
    members: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    test_fingerprint: str = ""


def _when(timestamp_ms: Any) -> str:
    if not timestamp_ms:
        return ""
    moment = dt.datetime.fromtimestamp(int(timestamp_ms) / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _all_registered(client: MlflowClient) -> list[Any]:
    models: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def _versions(client: MlflowClient, name: str) -> list[Any]:
    found: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda version: int(version.version))


def list_models(client: MlflowClient, *, include_members: bool = False) -> list[ModelSummary]:
    """Registered ensembles (and members if asked), by name."""
    with translated("listing registered models"):
        rows = []
        for model in _all_registered(client):
            kind = (model.tags or {}).get(tag.KIND, "other")
            if kind != "ensemble" and not include_members:
                continue
            versions = _versions(client, model.name)
            rows.append(
                ModelSummary(
                    name=model.name,
                    kind=kind,
                    versions=len(versions),
                    latest=int(versions[-1].version) if versions else None,
                    aliases={alias: int(v) for alias, v in (model.aliases or {}).items()},
                    updated=_when(model.last_updated_timestamp),
                )
            )
    return sorted(rows, key=lambda row: row.name)


def version_rows(client: MlflowClient, name: str) -> list[VersionRow]:
    """Every version of ensemble ``name`` with its aliases, member versions and metrics."""
    require_ensemble(client, name)
    with translated(f"ensemble {name!r}"):
        model = client.get_registered_model(name)
        by_version: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(int(version), []).append(alias)
        rows = []
        for version in _versions(client, name):
            tags = version.tags or {}
            metrics = {}
            for key, value in tags.items():
                if key.startswith(tag.METRIC_PREFIX):
                    try:
                        metrics[key.removeprefix(tag.METRIC_PREFIX)] = float(value)
                    except ValueError:
                        continue
            rows.append(
                VersionRow(
                    version=int(version.version),
                    aliases=sorted(by_version.get(int(version.version), [])),
                    created=_when(version.creation_timestamp),
                    run_id=str(version.run_id or ""),
                    members={
                        key.removeprefix("member."): int(value)
                        for key, value in tags.items()
                        if key.startswith("member.") and value.isdigit()
                    },
                    metrics=metrics,
                    test_fingerprint=tags.get(tag.DATASET_TEST_FINGERPRINT, ""),
                )
            )
    return rows


def member_metrics(client: MlflowClient, name: str, version: int) -> dict[str, float]:
    """Metrics recorded on a member version's tags (empty if the version is gone)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_model_version(name, str(version)).tags or {}
    except MlflowException:
        return {}
    out = {}
    for key, value in tags.items():
        if key.startswith(tag.METRIC_PREFIX):
            try:
                out[key.removeprefix(tag.METRIC_PREFIX)] = float(value)
            except ValueError:
                continue
    return out
