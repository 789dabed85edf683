"""Hot reload of the traffic policies: the gateway's config file, read again when it changes.

Flags and environment variables cannot change while a process runs, so the YAML file given with
``--config`` is what an operator edits: every ``poll_interval_s`` its size and modification time
are checked, and a changed file is read again through the same precedence as at start (flags,
then environment, then the file; dicts merge key by key). Only ``traffic`` is applied; any other
setting that changed is named in a warning, since it needs a restart. A file that no longer
validates is reported once, in one line, and the policies in force stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from contracts.errors import one_line, validation_summary
from serving.settings import GatewaySettings
from serving.traffic.policy import TrafficPolicy

log = logging.getLogger(__name__)

Policies = dict[str, TrafficPolicy]


class TrafficReloadError(Exception):
    """The config file could not be read again or no longer validates; the message is one line."""


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size)


class TrafficReloader:
    """Answers the traffic policies of the config file each time the file has changed."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        path = settings.config_file
        self._stamp = _stamp(path) if path is not None and path.is_file() else None

    @property
    def watching(self) -> bool:
        """Whether there is a file to watch at all (the gateway was started with ``--config``)."""
        return self._settings.config_file is not None

    def poll(self) -> Policies | None:
        """The policies as the file now says, if it changed since the last poll; else None."""
        path = self._settings.config_file
        if path is None:
            return None
        try:
            stamp = _stamp(path)
        except OSError as exc:
            if self._stamp is None:
                return None  # already reported, or never there
            self._stamp = None
            raise TrafficReloadError(f"cannot read {path}: {exc.strerror}") from None
        if stamp == self._stamp:
            return None
        # Remember the stamp first: a broken file is reported once, not on every poll.
        self._stamp = stamp
        try:
            fresh = self._settings.reload()
        except ValidationError as exc:
            raise TrafficReloadError(f"{path}: {validation_summary(exc)}") from None
        except Exception as exc:  # YAML syntax and the like: one line, the old policies stay
            raise TrafficReloadError(f"{path}: {one_line(exc)}") from None
        changed = [
            name
            for name in type(fresh).model_fields
            if name != "traffic" and getattr(fresh, name) != getattr(self._settings, name)
        ]
        if changed:
            log.warning(
                "%s: %s changed; only the traffic policy applies while the gateway runs, restart for that",
                path,
                ", ".join(changed),
            )
        return dict(fresh.traffic)


async def watch_traffic(
    reloader: TrafficReloader,
    interval_s: float,
    apply: Callable[[Policies], None],
    on_error: Callable[[TrafficReloadError], None],
) -> None:
    """Poll the config file forever; hand every changed set of policies to ``apply``."""
    if not reloader.watching:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            # The file is small, but the event loop serves requests: read it on a worker thread.
            policies = await asyncio.to_thread(reloader.poll)
        except TrafficReloadError as exc:
            on_error(exc)
            continue
        if policies is not None:
            apply(policies)
