"""The last-known-good manifest: what the gateway last served from the registry, kept on local disk.

The gateway writes it atomically each time it takes a snapshot from the registry, and reads it at
start when the registry cannot be reached: a restart, scale-up or rollout during a registry
outage then serves what was served before, instead of exiting. The file records which source it
came from (tracking URI, ensemble, aliases); one written for another source is never served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import one_line
from contracts.files import atomic_write_text
from contracts.manifest import Manifest
from serving.manifest_source import ManifestLoadError, ServedManifests

FORMAT = 1


@dataclass(frozen=True, slots=True)
class SavedManifests:
    """A snapshot read back from disk, with when it was saved."""

    served: ServedManifests
    saved_at: str
    """UTC, ISO 8601 to the second."""


class LastGoodStore:
    """One file holding the last snapshot taken from ``source`` (a manifest source's description)."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self._source = source

    def save(self, served: ServedManifests) -> None:
        """Write ``served`` atomically; raises OSError when the file cannot be written."""
        document: dict[str, Any] = {
            "format": FORMAT,
            "source": self._source,
            "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "default": served.default.model_dump(mode="json"),
            "labels": {label: m.model_dump(mode="json") for label, m in served.labels.items()},
        }
        atomic_write_text(self.path, json.dumps(document, indent=1) + "\n")

    def load(self) -> SavedManifests | None:
        """The saved snapshot; None when there is none. ManifestLoadError when it cannot be used."""
        try:
            document = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ManifestLoadError(f"cannot read {self.path}: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ManifestLoadError(f"{self.path} is not a last-known-good manifest file")
        if document.get("source") != self._source:
            raise ManifestLoadError(
                f"{self.path} was saved from {document.get('source')!r}, not from {self._source!r}"
            )
        try:
            default = Manifest.model_validate(document["default"])
            labels = {str(k): Manifest.model_validate(v) for k, v in dict(document["labels"]).items()}
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise ManifestLoadError(f"{self.path} holds no valid manifest: {one_line(exc)}") from None
        return SavedManifests(
            ServedManifests(default=default, labels=labels), str(document.get("saved_at", ""))
        )
