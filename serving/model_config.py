"""``models.config``: typed reading and writing of TF Serving's model server config (text format).

Training, the registry sync and the local backend all go through here, so the file they write
is the one TF Serving reads (``--model_config_file``): a ``model_config_list`` of models, each
with a base path, a version policy and optional version labels.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from serving.protos import ModelConfig, ModelServerConfig

LABEL_PATTERN = re.compile(r"[a-zA-Z0-9_]+")
"""Version labels TF Serving accepts."""


class ModelConfigError(ValueError):
    """A models.config that cannot be read, or entries that cannot be written."""


@dataclass(slots=True)
class ModelEntry:
    """One model of the config: where its versions live and which of them to serve.

    The version policy is one of: ``versions`` (exactly these), ``all_versions`` (every version
    found), ``latest`` (the N highest). None of them set means TF Serving's default, the latest one.
    """

    name: str
    base_path: str
    versions: list[int] | None = None
    latest: int | None = None
    all_versions: bool = False
    labels: dict[str, int] = field(default_factory=dict)
    model_platform: str = "tensorflow"

    def validate(self) -> None:
        """Raise ModelConfigError for an entry TF Serving would reject."""
        where = f"model {self.name!r}"
        if not self.name:
            raise ModelConfigError("a model needs a name")
        if not self.base_path:
            raise ModelConfigError(f"{where}: base_path is empty")
        chosen = sum([self.versions is not None, self.latest is not None, self.all_versions])
        if chosen > 1:
            raise ModelConfigError(f"{where}: set at most one of versions, latest and all_versions")
        if self.versions is not None and (not self.versions or any(v < 0 for v in self.versions)):
            raise ModelConfigError(f"{where}: versions must be a non-empty list of non-negative integers")
        if self.latest is not None and self.latest < 1:
            raise ModelConfigError(f"{where}: latest must be at least 1")
        for label, version in self.labels.items():
            if not LABEL_PATTERN.fullmatch(label):
                raise ModelConfigError(f"{where}: version label {label!r} must match [a-zA-Z0-9_]+")
            if version < 0:
                raise ModelConfigError(
                    f"{where}: version label {label!r} points at negative version {version}"
                )

    @property
    def num_latest(self) -> int | None:
        """How many latest versions to serve, or None when the policy is specific or all."""
        if self.versions is not None or self.all_versions:
            return None
        return self.latest or 1


def _to_proto(entry: ModelEntry) -> ModelConfig:
    entry.validate()
    config = ModelConfig(name=entry.name, base_path=entry.base_path, model_platform=entry.model_platform)
    policy = config.model_version_policy
    if entry.versions is not None:
        policy.specific.versions.extend(entry.versions)
    elif entry.all_versions:
        policy.all.SetInParent()
    elif entry.latest is not None:
        policy.latest.num_versions = entry.latest
    for label, version in sorted(entry.labels.items()):
        config.version_labels[label] = version
    return config


def _from_proto(config: ModelConfig) -> ModelEntry:
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    entry = ModelEntry(
        name=config.name,
        base_path=config.base_path,
        versions=list(policy.specific.versions) if choice == "specific" else None,
        latest=(policy.latest.num_versions or 1) if choice == "latest" else None,
        all_versions=choice == "all",
        labels=dict(config.version_labels),
        model_platform=config.model_platform or "tensorflow",
    )
    entry.validate()
    return entry


def dumps_model_config(entries: Sequence[ModelEntry]) -> str:
    """The text-format config for these entries."""
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelConfigError(f"model names must be unique, repeated: {', '.join(duplicates)}")
    config = ModelServerConfig()
    config.model_config_list.config.extend(_to_proto(entry) for entry in entries)
    return str(text_format.MessageToString(config))


def loads_model_config(text: str, *, source: str = "models.config") -> list[ModelEntry]:
    """Parse a text-format config; raises ModelConfigError naming ``source`` on bad input."""
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid model server config: {exc}") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"{source}: custom_model_config is not supported, use model_config_list")
    try:
        entries = [_from_proto(model) for model in config.model_config_list.config]
        dumps_model_config(entries)  # the same checks as writing: unique names
    except ModelConfigError as exc:
        raise ModelConfigError(f"{source}: {exc}") from None
    return entries


def write_model_config(path: Path, entries: Sequence[ModelEntry]) -> None:
    """Write ``models.config`` atomically: a reader (TF Serving polling it) sees old or new, never half."""
    write_atomically(Path(path), dumps_model_config(entries))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_model_config(path: Path) -> list[ModelEntry]:
    """Read ``models.config``; raises ModelConfigError for a missing or malformed file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such model config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc}") from None
    return loads_model_config(text, source=str(path))
