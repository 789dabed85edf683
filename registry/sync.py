"""Syncing aliases to a TF Serving model repository: ``<repo>/<member>/<version>/`` plus ``models.config``.

One pass: resolve each alias to its manifest, download the member versions they need (each into a
hidden folder, then renamed into place), write ``models.config`` (a specific version policy and one
version label per alias) to a temporary file and rename it over the old one, and only then prune
version folders that no alias needs any more. A pass that changes nothing writes nothing.

Labels and loading: TF Serving refuses a label that points at a version it has not loaded yet.
The default (``immediate``) writes labels in the same pass as the versions, and expects TF Serving
to run with ``--allow_version_labels_for_unavailable_models``. With ``staged``, a label only moves
to a version that the previous ``models.config`` already listed; until then it keeps pointing at
its old version (kept on disk), and the next pass (``--watch``) moves it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from registry.aliases import check_alias
from registry.client import translated
from registry.errors import InvalidArgument, NotFound, RegistryError
from registry.manifest import Manifest
from registry.promotion import check_members
from registry.resolve import load_manifest, version_for_alias

if TYPE_CHECKING:
    from mlflow import MlflowClient


CONFIG_FILE = "models.config"
STATE_DIR = ".ensemble-sync"
INCOMING_PREFIX = ".incoming-"
LabelPolicy = Literal["immediate", "staged"]


@dataclass(slots=True)
class SyncResult:
    """What one pass did."""

    config: Path
    changed: bool
    versions: dict[str, list[int]]
    labels: dict[str, dict[str, int]]
    downloaded: list[tuple[str, int]] = field(default_factory=list)
    pruned: list[tuple[str, int]] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    """``model@label`` entries a staged pass could not move yet."""
    skipped: list[str] = field(default_factory=list)
    """Optional aliases (all but the first) that point at nothing yet."""

    def summary(self) -> str:
        parts = [f"{CONFIG_FILE} {'updated' if self.changed else 'unchanged'}"]
        if self.downloaded:
            parts.append("downloaded " + ", ".join(f"{m}/{v}" for m, v in self.downloaded))
        if self.pruned:
            parts.append("pruned " + ", ".join(f"{m}/{v}" for m, v in self.pruned))
        if self.deferred:
            parts.append("labels waiting for a loaded version: " + ", ".join(self.deferred))
        if self.skipped:
            parts.append("aliases not set yet, skipped: " + ", ".join(self.skipped))
        return "; ".join(parts)


def _state_path(repo: Path, name: str) -> Path:
    return repo / STATE_DIR / f"{name}.json"


@dataclass(slots=True)
class _State:
    """What earlier passes of one ensemble's sync put in the repository.

    ``models``: the models it manages (other entries of a shared models.config are left alone).
    ``sources``: ``"<model>/<version>"`` -> the registry source it was downloaded from, so a
    version folder that came from elsewhere (say, a local training export) is never mistaken
    for the registered version with the same number.
    """

    models: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)


def _read_state(repo: Path, name: str) -> _State:
    try:
        data = json.loads(_state_path(repo, name).read_text())
        return _State(set(data["models"]), dict(data.get("sources", {})))
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return _State()


def _write_state(repo: Path, name: str, state: _State) -> None:
    path = _state_path(repo, name)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = {"ensemble": name, "models": sorted(state.models), "sources": dict(sorted(state.sources.items()))}
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _download_version(client: MlflowClient, repo: Path, model: str, version: int, state: _State) -> bool:
    """Put ``model`` version ``version`` at ``<repo>/<model>/<version>/``; False if it was already there."""
    target = repo / model / str(version)
    key = f"{model}/{version}"
    with translated(f"downloading {model} version {version}"):
        from mlflow.artifacts import download_artifacts

        source = str(client.get_model_version_download_uri(model, str(version)))
        if (target / "saved_model.pb").is_file() and state.sources.get(key) == source:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        # Downloaded next to its final place, so the rename is atomic and TF Serving (which ignores
        # non-numeric folders) never sees half a SavedModel.
        with tempfile.TemporaryDirectory(prefix=INCOMING_PREFIX, dir=target.parent) as tmp:
            local = Path(
                download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri)
            )
            if not (local / "saved_model.pb").is_file():
                raise RegistryError(f"{model} version {version}: {source} holds no saved_model.pb")
            if target.exists():
                # Not what the registry holds under this number (or incomplete): swap it out.
                os.replace(target, Path(tmp) / "replaced")
            os.replace(local, target)
    state.sources[key] = source
    return True


def sync_once(
    client: MlflowClient,
    name: str,
    aliases: Sequence[str],
    repo: Path,
    *,
    base_path: str | None = None,
    label_policy: LabelPolicy = "immediate",
) -> SyncResult:
    """One sync pass of ``name``'s ``aliases`` into ``repo``; see the module docstring."""
    from serving.model_config import (
        ModelConfigError,
        ModelEntry,
        dumps_model_config,
        read_model_config,
        write_model_config,
    )

    if not aliases:
        raise InvalidArgument("sync needs at least one --alias")
    for alias in aliases:
        check_alias(alias)
    repo = repo.resolve()
    if repo.exists() and not repo.is_dir():
        raise InvalidArgument(f"{repo} is not a directory")
    repo.mkdir(parents=True, exist_ok=True)

    manifests: dict[str, Manifest] = {}
    skipped: list[str] = []
    for position, alias in enumerate(aliases):
        try:
            version = version_for_alias(client, name, alias)
        except NotFound:
            # The first alias is the one served by default and must exist; later ones (a
            # challenger on a fresh install) may not be set yet and join on a later pass.
            if position == 0:
                raise
            skipped.append(alias)
            continue
        manifest = load_manifest(client, name, version)
        check_members(client, manifest)
        manifests[alias] = manifest

    config_path = repo / CONFIG_FILE
    try:
        old_entries = read_model_config(config_path) if config_path.exists() else []
    except ModelConfigError as exc:
        raise InvalidArgument(f"cannot update {config_path}: {exc}") from None
    previous = {entry.name: entry for entry in old_entries}

    wanted: dict[str, dict[str, int]] = {}  # model -> alias -> version
    for alias, manifest in manifests.items():
        for member in manifest.members:
            wanted.setdefault(member.name, {})[alias] = member.version

    result = SyncResult(config=config_path, changed=False, versions={}, labels={}, skipped=skipped)
    for model, by_alias in sorted(wanted.items()):
        labels: dict[str, int] = {}
        old = previous.get(model)
        for alias, version in by_alias.items():
            if label_policy == "staged" and (old is None or version not in (old.versions or [])):
                if old is not None and alias in old.labels:
                    labels[alias] = old.labels[alias]  # stays where TF Serving has it loaded
                result.deferred.append(f"{model}@{alias}")
            else:
                labels[alias] = version
        result.versions[model] = sorted(set(by_alias.values()) | set(labels.values()))
        result.labels[model] = labels

    state = _read_state(repo, name)
    for model, versions in result.versions.items():
        for version in versions:
            if _download_version(client, repo, model, version, state):
                result.downloaded.append((model, version))

    managed = state.models | set(result.versions)
    entries = [entry for model, entry in sorted(previous.items()) if model not in managed]
    entries += [
        ModelEntry(
            name=model,
            base_path=f"{base_path.rstrip('/')}/{model}" if base_path else str(repo / model),
            versions=versions,
            labels=result.labels[model],
        )
        for model, versions in result.versions.items()
    ]
    try:
        unchanged = config_path.exists() and dumps_model_config(entries) == dumps_model_config(old_entries)
        if not unchanged:
            # Atomic (temporary file, then rename): TF Serving polls the file and never reads half of it.
            write_model_config(config_path, entries)
            result.changed = True
    except ModelConfigError as exc:
        raise InvalidArgument(f"cannot write {config_path}: {exc}") from None
    state.models = set(result.versions)
    state.sources = {
        key: source
        for key, source in state.sources.items()
        if int(key.rpartition("/")[2]) in result.versions.get(key.rpartition("/")[0], [])
    }
    _write_state(repo, name, state)

    # Pruned only now, with the new config in place: nothing still listed loses its folder.
    for model in sorted(managed):
        folder = repo / model
        if not folder.is_dir():
            continue
        keep = set(result.versions.get(model, []))
        for child in folder.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) not in keep:
                shutil.rmtree(child)
                result.pruned.append((model, int(child.name)))
        if model not in result.versions and not any(folder.iterdir()):
            folder.rmdir()
    return result


def watch(
    pass_once: Callable[[], SyncResult],
    *,
    interval_s: float,
    report: Callable[[str], None],
    max_passes: int | None = None,
) -> None:
    """Run ``pass_once`` every ``interval_s``; a failed pass is reported and retried, never fatal."""
    passes = 0
    while max_passes is None or passes < max_passes:
        started = time.monotonic()
        try:
            result = pass_once()
            if result.changed or result.downloaded or result.pruned or result.deferred:
                report(result.summary())
        except RegistryError as exc:
            report(f"sync failed, retrying in {interval_s:g}s: {exc}")
        passes += 1
        if max_passes is not None and passes >= max_passes:
            break
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
