"""Resolving ``NAME@ALIAS`` or ``NAME/VERSION`` to a registered ensemble manifest.

The gateway polls :func:`resolve_version` (one cheap registry call) and fetches the manifest with
:func:`resolve_manifest_version` only when the version changed; registered versions never change,
so their manifests are cached in-process.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from contracts.errors import validation_summary
from contracts.manifest import Manifest
from registry.client import connect, missing_as_not_found, translated
from registry.defaults import tracking_uri as default_tracking_uri
from registry.errors import InvalidArgument, InvalidManifest, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

MANIFEST_FILE = "ensemble.json"
MANIFEST_ARTIFACT_DIR = "manifest"
"""Artifact folder of the parent run that holds the registered manifest; a version's source points here."""

_MANIFEST_CACHE_SIZE = 256
_MANIFESTS: dict[tuple[str, str, int], Manifest] = {}

_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<alias>[A-Za-z0-9_]+)|/(?P<version>\d+))?$")


@dataclass(frozen=True, slots=True)
class EnsembleRef:
    """A parsed ``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name


def parse_ref(text: str) -> EnsembleRef:
    """Parse ``NAME[@ALIAS|/VERSION]``; raise InvalidArgument on anything else."""
    match = _REF.match(text.strip())
    if match is None:
        raise InvalidArgument(
            f"not an ensemble reference: {text!r} (expected NAME, NAME@ALIAS or NAME/VERSION)"
        )
    version = match.group("version")
    return EnsembleRef(match.group("name"), match.group("alias"), int(version) if version else None)


def version_for_alias(client: MlflowClient, name: str, alias: str) -> int:
    """The manifest version ``alias`` points at; NotFound names what is missing."""
    require_ensemble(client, name)
    with (
        translated(f"ensemble {name!r} alias {alias!r}"),
        missing_as_not_found(f"ensemble {name!r} has no alias {alias!r}"),
    ):
        return int(client.get_model_version_by_alias(name, alias).version)


def require_ensemble(client: MlflowClient, name: str) -> None:
    with (
        translated(f"ensemble {name!r}"),
        missing_as_not_found(f"unknown ensemble {name!r}", frozenset({"RESOURCE_DOES_NOT_EXIST"})),
    ):
        client.get_registered_model(name)


def load_manifest(client: MlflowClient, name: str, version: int) -> Manifest:
    """Download and validate the manifest registered as ``name`` version ``version``."""
    key = (str(client.tracking_uri), name, version)
    cached = _MANIFESTS.get(key)
    if cached is None:
        cached = _fetch_manifest(client, name, version)
        if len(_MANIFESTS) >= _MANIFEST_CACHE_SIZE:
            _MANIFESTS.pop(next(iter(_MANIFESTS)))
        _MANIFESTS[key] = cached
    return cached


def _fetch_manifest(client: MlflowClient, name: str, version: int) -> Manifest:
    require_ensemble(client, name)
    with translated(f"ensemble {name!r} version {version}"):
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        with missing_as_not_found(f"ensemble {name!r} has no version {version}"):
            model_version = client.get_model_version(name, str(version))
        source = str(model_version.source).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="manifest-") as tmp:
            try:
                local = download_artifacts(
                    artifact_uri=f"{source}/{MANIFEST_FILE}",
                    dst_path=tmp,
                    tracking_uri=client.tracking_uri,
                )
                text = Path(local).read_bytes()
            except (MlflowException, OSError) as exc:
                raise InvalidManifest(
                    f"ensemble {name!r} version {version}: manifest missing at {source}"
                ) from exc
    try:
        manifest = Manifest.from_json(text)
    except ValidationError as exc:
        raise InvalidManifest(
            f"ensemble {name!r} version {version}: invalid manifest ({validation_summary(exc)})"
        ) from None
    if manifest.name != name or manifest.version != version:
        raise InvalidManifest(
            f"ensemble {name!r} version {version}: manifest says {manifest.name!r} version {manifest.version}"
        )
    return manifest


def resolve_version(tracking_uri: str | None, name: str, alias: str) -> int:
    """The manifest version that ``name@alias`` points at now."""
    return version_for_alias(connect(default_tracking_uri(tracking_uri)), name, alias)


def resolve_manifest(tracking_uri: str | None, name: str, alias: str) -> Manifest:
    """The manifest ``name@alias`` points at now.

    Raises NotFound (unknown ensemble or alias), Unreachable (MLflow down after retries) or
    InvalidManifest; all are :class:`registry.errors.RegistryError`.
    """
    client = connect(default_tracking_uri(tracking_uri))
    return load_manifest(client, name, version_for_alias(client, name, alias))


def resolve_manifest_version(tracking_uri: str | None, name: str, version: int) -> Manifest:
    """The manifest registered as ``name`` version ``version``."""
    return load_manifest(connect(default_tracking_uri(tracking_uri)), name, version)


def resolve_ref(tracking_uri: str | None, ref: str | EnsembleRef) -> Manifest:
    """Resolve ``NAME@ALIAS`` or ``NAME/VERSION`` (a bare NAME means its ``champion``)."""
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    if parsed.version is not None:
        return resolve_manifest_version(tracking_uri, parsed.name, parsed.version)
    return resolve_manifest(tracking_uri, parsed.name, parsed.alias or "champion")


__all__ = [
    "EnsembleRef",
    "RegistryError",
    "parse_ref",
    "resolve_manifest",
    "resolve_manifest_version",
    "resolve_ref",
    "resolve_version",
]
