"""Opening the MLflow client: retries with backoff, and MLflow's exceptions turned into ours.

Every mlflow import in the project happens inside a function of this package, never at import time.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.errors import one_line
from registry.defaults import is_local_store, local_artifact_root, tracking_uri
from registry.errors import NotFound, RegistryError, Unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient as MlflowClient

CONNECT_ATTEMPTS = 4
CONNECT_FIRST_DELAY_S = 0.5

# MLflow's own per-request retries default to ~4 minutes of backoff; a command should fail sooner.
# Users can still raise them through the same environment variables.
_HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def wait_reachable(
    uri: str, *, attempts: int = CONNECT_ATTEMPTS, first_delay_s: float = CONNECT_FIRST_DELAY_S
) -> None:
    """Probe a tracking server's ``/health`` with exponential backoff; raise Unreachable if it stays down."""
    delay = first_delay_s
    last_error = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    raise Unreachable(f"MLflow at {uri} is unreachable after {attempts} attempts ({last_error})")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def connect(
    uri: str | None = None, *, attempts: int = CONNECT_ATTEMPTS, create: bool = False
) -> MlflowClient:
    """An MlflowClient for ``uri`` (or the default), after checking that a server answers.

    A local SQLite store that does not exist yet is created only with ``create`` (training does);
    reading from it otherwise is NotFound, rather than an empty registry in the wrong directory.
    """
    resolved = tracking_uri(uri)
    for key, value in _HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    database = sqlite_path(resolved)
    if database is not None and not create and not database.is_file():
        raise NotFound(
            f"no registry at {resolved} ({database.resolve()} does not exist; pass --tracking-uri?)"
        )
    if not is_local_store(resolved):
        wait_reachable(resolved, attempts=attempts)
    with translated(f"opening {resolved}"):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if absent (artifacts in ./mlartifacts for a local store)."""
    with translated(f"experiment {name!r}"):
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                client.restore_experiment(existing.experiment_id)
            return str(existing.experiment_id)
        location = local_artifact_root() if is_local_store(client.tracking_uri) else None
        return str(client.create_experiment(name, artifact_location=location))


MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
"""MLflow's error codes for a model, version or alias that does not exist (a bad version number too)."""


@contextmanager
def missing_as_not_found(message: str, codes: frozenset[str] = MISSING_CODES) -> Iterator[None]:
    """Inside the block, MLflow's "does not exist" (``codes``) becomes NotFound(``message``)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in codes:
            raise NotFound(message) from None
        raise


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise MLflow and network exceptions as RegistryError subclasses with a one-line message."""
    try:
        yield
    except RegistryError:
        raise
    except Exception as exc:
        raise _translate(exc, what) from exc


def _translate(exc: Exception, what: str) -> RegistryError:
    from mlflow.exceptions import MlflowException

    message = one_line(exc, limit=300)
    if isinstance(exc, MlflowException):
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NotFound(f"{what}: not found")
        if "failed with exception" in message or "Max retries exceeded" in message:
            return Unreachable(f"{what}: MLflow is unreachable ({message})")
        return RegistryError(f"{what}: {message}")
    if isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in {
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "MaxRetryError",
    }:
        return Unreachable(f"{what}: MLflow is unreachable ({message})")
    return RegistryError(f"{what}: {type(exc).__name__}: {message}")
