"""Shadow calls: fire-and-forget work with its own concurrency limit, never felt by the caller.

:meth:`ShadowRunner.submit` returns at once, before the work has started. Over the limit the work
is dropped and counted, never queued: a slow or dead challenger then costs at most ``limit`` calls
in flight, not a growing backlog. Whatever the work does (raise, hang past the timeout, be
cancelled at shutdown) stays inside the runner: the caller never sees an exception, and every task
ends with its outcome retrieved, so asyncio never logs "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["answered", "failed", "dropped"]


class ShadowRunner:
    """Runs shadow work in the background, at most ``limit`` at a time."""

    def __init__(
        self,
        limit: int,
        *,
        timeout_s: float | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("the shadow concurrency limit must be at least 1")
        self.limit = limit
        self.timeout_s = timeout_s
        self._on_outcome = on_outcome
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(
        self,
        work: Callable[[], Awaitable[T]],
        on_result: Callable[[T], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> bool:
        """Start ``work()`` in the background unless the limit is reached; whether it started.

        ``on_result`` gets its answer; ``on_error`` any exception it raised, including the
        timeout. Neither runs if the runner is closed first.
        """
        if self._closed or len(self._tasks) >= self.limit:
            self._count("dropped")
            return False
        try:
            task = asyncio.get_running_loop().create_task(self._run(work, on_result, on_error))
        except Exception:  # no running loop, or the loop is closing: the caller must not notice
            log.exception("shadow call could not be started")
            self._count("failed")
            return False
        # A strong reference: the event loop keeps only weak ones, and a collected task is lost.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(
        self,
        work: Callable[[], Awaitable[T]],
        on_result: Callable[[T], None],
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await work()
        except asyncio.CancelledError:
            if self._closed:
                return  # shutting down: nobody is waiting for this answer
            raise
        except Exception as exc:  # the challenger's failure is data, never the caller's problem
            self._count("failed")
            _call_safely(on_error, exc)
            return
        self._count("answered")
        _call_safely(on_result, result)

    def _count(self, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            _call_safely(self._on_outcome, outcome)

    async def close(self) -> None:
        """Cancel the shadow calls in flight and wait until they have ended; refuse new ones."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _call_safely(callback: Callable[[T], None] | None, value: T) -> None:
    """A bug in a callback is logged, never raised into the event loop's task machinery."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception:
        log.exception("shadow callback %r failed", callback)
