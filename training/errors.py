"""Errors of the training pipeline that end a command with one line and a non-zero exit."""

from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix; the CLI prints its message alone, without a traceback."""


class ConfigError(TrainingError):
    """The configuration is unreadable or invalid."""


class DataError(TrainingError):
    """The data cannot be read, or does not fit the configuration."""


class ExportError(TrainingError):
    """An exported SavedModel does not reproduce its Keras model."""
