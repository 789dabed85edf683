"""Where the registry lives when nobody says: the one default tracking URI every part shares.

Light on purpose (no mlflow import): training, the gateway and the CLI import it for their defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
"""Embedded store, relative to the working directory: no server needed (the demo uses it)."""

DEFAULT_ARTIFACT_DIR = "mlartifacts"
"""Local artifact folder (relative to the working directory) that goes with the embedded store."""

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

DEFAULT_SYNC_GRACE_S = 120.0
"""How long ``ensemble sync`` keeps a version no alias names any more: long enough for the chain of
polls with the shipped settings (10 s each, 5 s request deadline) and about 80 s of model loading
(``registry.sync.minimum_grace_s``)."""


def tracking_uri(explicit: str | None = None) -> str:
    """The URI to use: the one given, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`."""
    if explicit:
        return explicit
    return os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def is_local_store(uri: str) -> bool:
    """True for stores the client opens itself (a database URL), False for a tracking server."""
    return not uri.startswith(("http://", "https://", "databricks"))


def local_artifact_root(base: Path | None = None) -> str:
    """The artifact root for experiments created in a local store: ``./mlartifacts`` as a file URI."""
    return ((base or Path.cwd()) / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
