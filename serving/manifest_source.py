"""Where the gateway's manifests come from: a file or registry aliases, polled for hot reload.

A source answers :meth:`ManifestSource.load` with a :class:`ServedManifests` snapshot. The
:func:`watch` loop polls it and hands every *changed* snapshot to a callback, which swaps it in
atomically; a snapshot that fails to load leaves the current one serving. A load error says
whether it is ``transient`` (the registry could not be reached) or a real answer (no such
ensemble or alias, an invalid manifest): only the first is worth waiting out at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from contracts.errors import one_line, validation_summary
from contracts.manifest import Manifest, MemberRef

log = logging.getLogger(__name__)


class ManifestLoadError(Exception):
    """The manifest could not be read or is not valid; the message says why, in one line.

    ``transient``: the source could not be reached (worth retrying), rather than answering no.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class ServedManifests:
    """What is served: the default manifest and, from a registry, one manifest per alias."""

    default: Manifest
    labels: Mapping[str, Manifest] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.default.name


def placements(served: ServedManifests) -> list[tuple[str | None, MemberRef]]:
    """(alias, member) for every member served: the default manifest's under the alias whose
    manifest it is (the first alias, from a registry), else under no alias (a manifest file)."""
    placed: list[tuple[str | None, MemberRef]] = [
        (alias, member) for alias, manifest in served.labels.items() for member in manifest.members
    ]
    default_alias = next((a for a, m in served.labels.items() if m == served.default), None)
    placed.extend((default_alias, member) for member in served.default.members)
    return placed


def _by_alias(
    new: ServedManifests, current: ServedManifests | None
) -> list[tuple[str | None, Manifest, Manifest | None]]:
    """(alias, its manifest in ``new``, what it serves now) for the default (alias None) and each alias."""
    return [
        (None, new.default, current.default if current is not None else None),
        *((a, m, current.labels.get(a) if current is not None else None) for a, m in new.labels.items()),
    ]


def moved(new: ServedManifests, current: ServedManifests | None) -> list[Manifest]:
    """The manifests of ``new`` that their alias does not serve now, each once: the ones whose
    members must be loaded, where that alias places them, before :func:`switchable` takes them.

    A version the challenger serves now is still new to the champion after a promotion: its
    members may not be loaded on the champion's backends yet.
    """
    found = {id(m): m for _, m, serving in _by_alias(new, current) if m != serving}
    return list(found.values())


def switchable(
    new: ServedManifests, current: ServedManifests | None, ready: Callable[[Manifest], bool]
) -> ServedManifests | None:
    """What of ``new`` can be served now, alias by alias, and the rest as it is served now.

    Each manifest of ``new`` is taken where its alias serves it now already, or where ``ready``
    says its members are loaded (it is one of :func:`moved`); otherwise its alias keeps the
    manifest it has now, or, new and not ready, waits (left out). So one alias whose backends are
    down or still loading never holds back another's move: a champion moves while the
    challenger's backends are down. None when not even the default manifest can be served.
    """
    default: Manifest | None = None
    labels: dict[str, Manifest] = {}
    for alias, manifest, serving in _by_alias(new, current):
        pick = manifest if manifest == serving or ready(manifest) else serving
        if pick is None:
            continue
        if alias is None:
            default = pick
        else:
            labels[alias] = pick
    return ServedManifests(default=default, labels=labels) if default is not None else None


def served_version(manifest: Manifest) -> int:
    """The version a manifest answers as: its registry version, 1 before registration."""
    return manifest.version if manifest.version is not None else 1


class ManifestSource(Protocol):
    def describe(self) -> str:
        """A short human description, for logs and errors."""
        ...

    async def load(self) -> ServedManifests:
        """Read the current manifests; raises ManifestLoadError."""
        ...


class FileManifestSource:
    """An ``ensemble.json`` on disk. It is only re-parsed when its size or mtime changed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._last: ServedManifests | None = None

    def describe(self) -> str:
        return f"manifest file {self._path}"

    async def load(self) -> ServedManifests:
        try:
            stat = self._path.stat()
        except OSError as exc:
            raise ManifestLoadError(f"cannot read {self._path}: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._last is not None and stamp == self._stamp:
            return self._last
        try:
            manifest = Manifest.load(self._path)
        except ValidationError as exc:
            raise ManifestLoadError(
                f"{self._path} is not a valid manifest: {validation_summary(exc, what='manifest')}"
            ) from None
        except OSError as exc:
            raise ManifestLoadError(f"cannot read {self._path}: {exc.strerror}") from None
        self._stamp, self._last = stamp, ServedManifests(default=manifest)
        return self._last


ResolveFn = Callable[[str, str, str], Manifest]


@dataclass(frozen=True, slots=True)
class RegistryPort:
    """The registry as the gateway sees it: how to resolve an alias, and what its errors mean.

    The gateway's one way into the registry, loaded by :func:`registry_port` only when a registry
    source is used, so a gateway serving a file never imports the registry or mlflow.
    """

    resolve: ResolveFn
    """``resolve(tracking_uri, ensemble, alias)``: the manifest the alias points at."""
    unset: tuple[type[BaseException], ...]
    """Errors meaning the alias is not set (yet): a challenger may join later."""
    answered: tuple[type[BaseException], ...]
    """Errors that are the registry's answer (no such ensemble or alias, an invalid manifest), not
    trouble reaching it: not worth waiting out at start."""


def registry_port() -> RegistryPort:
    """The registry's resolver and error types; ImportError without the 'registry' extra."""
    from registry.errors import InvalidArgument, InvalidManifest, NotFound
    from registry.resolve import resolve_manifest

    return RegistryPort(
        resolve=resolve_manifest, unset=(NotFound,), answered=(NotFound, InvalidManifest, InvalidArgument)
    )


class RegistryManifestSource:
    """Registry aliases of one ensemble; the first alias is the default."""

    def __init__(
        self,
        tracking_uri: str,
        ensemble: str,
        aliases: list[str],
        resolve: ResolveFn | None = None,
    ) -> None:
        if not aliases:
            raise ValueError("at least one alias is needed")
        self._tracking_uri = tracking_uri
        self._ensemble = ensemble
        self._aliases = list(aliases)
        self._resolve = resolve

    def describe(self) -> str:
        return f"registry {self._tracking_uri} ensemble {self._ensemble} aliases {','.join(self._aliases)}"

    def _load_blocking(self) -> ServedManifests:
        try:
            port = registry_port()
        except ImportError as exc:
            raise ManifestLoadError(
                f"serving from a registry needs the 'registry' extra installed ({exc.name} is missing)"
            ) from None
        resolve = self._resolve or port.resolve
        labels: dict[str, Manifest] = {}
        for position, alias in enumerate(self._aliases):
            try:
                labels[alias] = resolve(self._tracking_uri, self._ensemble, alias)
            except Exception as exc:  # the registry's errors are many; each becomes one line
                if isinstance(exc, port.unset) and position > 0:
                    continue  # only the default alias must exist; a challenger joins when it is set
                raise ManifestLoadError(
                    f"cannot resolve {self._ensemble}@{alias}: {one_line(exc)}",
                    transient=not isinstance(exc, port.answered),
                ) from None
        return ServedManifests(default=labels[self._aliases[0]], labels=labels)

    async def load(self) -> ServedManifests:
        # mlflow's client blocks; keep it off the event loop that serves requests.
        return await asyncio.to_thread(self._load_blocking)


async def watch(
    source: ManifestSource,
    current: ServedManifests,
    interval_s: float,
    on_change: Callable[[ServedManifests], Awaitable[bool]],
    on_error: Callable[[ManifestLoadError], None],
    on_loaded: Callable[[ServedManifests], None] | None = None,
) -> None:
    """Poll ``source`` forever; call ``on_change`` with each snapshot that differs from the last.

    ``on_change`` answers whether it took the snapshot; one it declined (its members are not
    loaded yet, say) is offered again on the next poll. ``on_loaded`` hears of every snapshot the
    source answered with, changed or not (the source is reachable again).
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            snapshot = await source.load()
        except ManifestLoadError as exc:
            on_error(exc)
            continue
        if on_loaded is not None:
            on_loaded(snapshot)
        if snapshot != current and await on_change(snapshot):
            current = snapshot


async def first_load(
    source: ManifestSource,
    *,
    first_delay_s: float,
    max_delay_s: float,
    on_error: Callable[[ManifestLoadError, float], None],
) -> ServedManifests:
    """Load ``source`` until it answers, waiting twice as long after each failure (up to ``max_delay_s``).

    ``on_error`` hears of each failure with the delay before the next try.
    """
    delay = first_delay_s
    while True:
        try:
            return await source.load()
        except ManifestLoadError as exc:
            on_error(exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)
