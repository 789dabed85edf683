"""Waiting helpers for the traffic tests: let the event loop run the background work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def settle(turns: int = 5) -> None:
    """A few event-loop turns: enough for shadow tasks that need no I/O to run and record."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition``, checking every 10 ms; the test's assertions decide what it means."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
