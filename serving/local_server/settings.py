"""The local backend's settings: TF Serving's own flag names and defaults, validated once at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BackendSettings(BaseModel):
    """What ``ensemble backend`` runs with; field names are ``tensorflow_model_server``'s flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(8500, ge=0, le=65535)
    """gRPC port (TF Serving's ``--port``)."""
    rest_api_port: int = Field(0, ge=0, le=65535)
    """REST port; 0 turns REST off, as in TF Serving (the usual choice is 8501)."""
    rest_api_timeout_in_ms: int = Field(30000, ge=0)
    """Upper bound on a REST predict; 0 for none."""
    model_config_file: Path | None = None
    """A ``models.config`` in TF Serving's text format; relative base paths are read from its folder."""
    model_config_file_poll_wait_seconds: int = Field(0, ge=0)
    """Re-read the config file this often; 0 reads it once at start."""
    model_name: str = "default"
    """Single-model mode: the model's name (with ``model_base_path``)."""
    model_base_path: Path | None = None
    """Single-model mode: the folder holding numbered version folders."""
    file_system_poll_wait_seconds: int = Field(1, ge=0)
    """Look for new or removed versions this often; 0 looks once at start (and on config changes)."""
    max_num_load_retries: int = Field(5, ge=0)
    """Retries of a version that fails to load, after the first try; 0 tries once."""
    load_retry_interval_micros: int = 60_000_000
    """Wait between load retries, in microseconds; negative does not wait."""
    fault_config: Path | None = None
    """Fault injection for tests and benchmarks (``serving.local_server.faults``); off when None."""
    host: str = "0.0.0.0"
    """Address both servers bind to (TF Serving binds all interfaces)."""
    model_threads: int = Field(default_factory=lambda: max(4, 2 * (os.cpu_count() or 1)), ge=1)
    """Threads running model calls concurrently."""
    grpc_max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Largest gRPC request or response accepted."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """How long in-flight requests may take to finish after SIGTERM."""

    @model_validator(mode="after")
    def _one_model_source(self) -> BackendSettings:
        if self.model_config_file is not None and self.model_base_path is not None:
            raise ValueError("use either --model_config_file or --model_base_path, not both")
        if self.model_config_file is None and self.model_base_path is None:
            raise ValueError("either --model_config_file or --model_base_path must be set")
        return self


def settings_from_flags(**flags: Any) -> BackendSettings:
    """BackendSettings from the CLI's flags, paths made absolute (the process may change directory).

    Lives here, apart from the server, so the CLI validates its flags before TensorFlow loads.
    """
    for key in ("model_config_file", "model_base_path", "fault_config"):
        if flags.get(key) is not None:
            flags[key] = Path(flags[key]).expanduser().resolve()
    return BackendSettings(**{key: value for key, value in flags.items() if value is not None})


def missing_paths(settings: BackendSettings) -> str | None:
    """A one-line complaint about the first path flag naming nothing on disk, else None."""
    if settings.model_config_file is not None and not settings.model_config_file.is_file():
        return f"--model_config_file {settings.model_config_file} not found"
    if settings.model_base_path is not None and not settings.model_base_path.is_dir():
        return f"--model_base_path {settings.model_base_path} is not a folder"
    if settings.fault_config is not None and not settings.fault_config.is_file():
        return f"--fault_config {settings.fault_config} not found"
    return None
