"""The files a sync pass owns in a model repository: its state, the version folders it downloads and prunes.

The state (``.ensemble-sync/<ensemble>.json``) remembers what earlier passes put there, so a
restarted sidecar keeps its grace clocks and never mistakes a folder from elsewhere for a
registered version. Downloads land in a hidden folder and are renamed into place; pruning removes
only numeric version folders of the models this sync manages.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.files import atomic_write_text
from registry.client import translated
from registry.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

STATE_DIR = ".ensemble-sync"
INCOMING_PREFIX = ".incoming-"


@dataclass(slots=True)
class SyncState:
    """What earlier passes of one ensemble's sync put in the repository.

    ``models``: the models it manages (other entries of a shared models.config are left alone).
    ``sources``: ``"<model>/<version>"`` -> the registry source it was downloaded from, so a
    version folder that came from elsewhere (say, a local training export) is never mistaken
    for the registered version with the same number.
    ``unnamed_since``: ``"<model>/<version>"`` -> when a pass first found no alias naming it.
    """

    models: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)
    unnamed_since: dict[str, float] = field(default_factory=dict)

    def forget_unlisted(self, versions: Mapping[str, list[int]]) -> None:
        """Manage exactly the models in ``versions``, and drop the sources of versions it no longer lists."""
        self.models = set(versions)
        self.sources = {
            key: source
            for key, source in self.sources.items()
            if int(key.rpartition("/")[2]) in versions.get(key.rpartition("/")[0], [])
        }


def _state_path(repo: Path, name: str) -> Path:
    return repo / STATE_DIR / f"{name}.json"


def read_state(repo: Path, name: str) -> SyncState:
    """``name``'s sync state in ``repo``; an empty one when there is none or it is unreadable."""
    try:
        data = json.loads(_state_path(repo, name).read_text())
        return SyncState(
            set(data["models"]),
            dict(data.get("sources", {})),
            {str(k): float(v) for k, v in dict(data.get("unnamed_since", {})).items()},
        )
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return SyncState()


def write_state(repo: Path, name: str, state: SyncState) -> None:
    data = {
        "ensemble": name,
        "models": sorted(state.models),
        "sources": dict(sorted(state.sources.items())),
        "unnamed_since": dict(sorted(state.unnamed_since.items())),
    }
    atomic_write_text(_state_path(repo, name), json.dumps(data, indent=1) + "\n")


def has_version(repo: Path, model: str, version: int) -> bool:
    """Whether ``<repo>/<model>/<version>/`` holds a SavedModel."""
    return (repo / model / str(version) / "saved_model.pb").is_file()


def download_version(client: MlflowClient, repo: Path, model: str, version: int, state: SyncState) -> bool:
    """Put ``model`` version ``version`` at ``<repo>/<model>/<version>/``; False if it was already there."""
    target = repo / model / str(version)
    key = f"{model}/{version}"
    with translated(f"downloading {model} version {version}"):
        from mlflow.artifacts import download_artifacts

        source = str(client.get_model_version_download_uri(model, str(version)))
        if has_version(repo, model, version) and state.sources.get(key) == source:
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


def prune_versions(
    repo: Path, managed: Iterable[str], versions: Mapping[str, list[int]]
) -> tuple[list[tuple[str, int]], list[str]]:
    """Delete the version folders of ``managed`` models that ``versions`` does not list.

    Returns what was pruned and ``model/version: why`` for each folder that could not be deleted
    (it is unlisted already; the next pass finds it again and retries). A model no longer listed
    loses its folder once it is empty.
    """
    pruned: list[tuple[str, int]] = []
    failed: list[str] = []
    for model in sorted(managed):
        folder = repo / model
        if not folder.is_dir():
            continue
        keep = set(versions.get(model, []))
        for child in folder.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) not in keep:
                try:
                    shutil.rmtree(child)
                except OSError as exc:
                    failed.append(f"{model}/{child.name}: {exc.strerror or exc}")
                    continue
                pruned.append((model, int(child.name)))
        if model not in versions and not any(folder.iterdir()):
            folder.rmdir()
    return pruned, failed
