"""The registry's errors: one base class, each a one-line message a command prints before exiting."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises on purpose; ``str(err)`` is a one-line message."""

    exit_code = 1


class NotFound(RegistryError):
    """An unknown ensemble, alias, version or member version."""


class Unreachable(RegistryError):
    """The tracking server did not answer, even after retries with backoff."""

    exit_code = 3


class InvalidManifest(RegistryError):
    """A registered manifest that cannot be parsed or that contradicts its registry entry."""


class PromotionRefused(RegistryError):
    """The promotion gate said no: worse metric, other test data, or no metric to compare."""


class OnlineEvidenceError(RegistryError):
    """The gateway answered, but not with a comparison summary the online gate can use."""


class InvalidArgument(RegistryError):
    """A command was given something it cannot use (bad reference, bad directory, ...)."""

    exit_code = 2
