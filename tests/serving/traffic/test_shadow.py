"""The shadow runner: bounded, fire-and-forget, dropped (not queued) over its limit, never raising."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from typing import Any

import pytest

from serving.traffic.shadow import Outcome, ShadowRunner
from tests.serving.traffic.helpers import settle


class Loop:
    """Records what the event loop's exception handler sees ("Task exception was never retrieved")."""

    def __init__(self) -> None:
        self.reported: list[dict[str, Any]] = []

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: self.reported.append(context))


def counting() -> tuple[Counter[Outcome], Any]:
    counts: Counter[Outcome] = Counter()
    return counts, counts.update


@pytest.mark.asyncio
async def test_submit_returns_before_the_work_starts_and_the_result_arrives_later() -> None:
    counts, count = counting()
    runner = ShadowRunner(2, on_outcome=lambda o: count([o]))
    started: list[bool] = []
    results: list[int] = []

    async def work() -> int:
        started.append(True)
        return 42

    assert runner.submit(work, results.append) is True
    assert started == [], "the caller went on before the shadow ran"
    assert runner.in_flight == 1
    await settle()
    assert results == [42]
    assert counts == {"answered": 1}
    assert runner.in_flight == 0


@pytest.mark.asyncio
async def test_over_the_limit_work_is_dropped_and_counted_never_queued() -> None:
    counts, count = counting()
    runner = ShadowRunner(3, on_outcome=lambda o: count([o]))
    release = asyncio.Event()
    ran = 0

    async def slow() -> None:
        nonlocal ran
        ran += 1
        await release.wait()

    accepted = [runner.submit(slow, lambda _: None) for _ in range(10)]
    assert accepted == [True] * 3 + [False] * 7
    assert counts == {"dropped": 7}
    await settle()
    assert runner.in_flight == 3
    assert ran == 3
    release.set()
    await settle()
    assert ran == 3, "dropped work never runs later"
    assert counts == {"dropped": 7, "answered": 3}
    # Room again once the slow ones ended.
    assert runner.submit(slow, lambda _: None) is True


@pytest.mark.asyncio
async def test_failures_timeouts_and_callback_bugs_stay_inside(caplog: pytest.LogCaptureFixture) -> None:
    loop = Loop()
    loop.install()
    counts, count = counting()
    runner = ShadowRunner(10, timeout_s=0.05, on_outcome=lambda o: count([o]))
    errors: list[BaseException] = []

    async def boom() -> int:
        raise RuntimeError("challenger exploded")

    async def hang() -> int:
        await asyncio.Event().wait()
        return 0

    async def fine() -> int:
        return 1

    def buggy(_: int) -> None:
        raise KeyError("a bug in the recorder")

    def not_async() -> Any:
        raise ValueError("raised before any await")

    assert runner.submit(boom, lambda _: None, errors.append)
    assert runner.submit(hang, lambda _: None, errors.append)
    assert runner.submit(fine, buggy, errors.append)
    assert runner.submit(not_async, lambda _: None, errors.append)
    while runner.in_flight:
        await asyncio.sleep(0.01)
    await settle()
    assert sorted(type(e).__name__ for e in errors) == ["RuntimeError", "TimeoutError", "ValueError"]
    assert counts == {"failed": 3, "answered": 1}
    assert "a bug in the recorder" in caplog.text
    gc.collect()
    await settle()
    assert loop.reported == [], "no task ended with an exception nobody retrieved"


@pytest.mark.asyncio
async def test_close_cancels_work_in_flight_and_refuses_new_work() -> None:
    loop = Loop()
    loop.install()
    counts, count = counting()
    runner = ShadowRunner(4, on_outcome=lambda o: count([o]))
    results: list[object] = []

    async def hang() -> None:
        await asyncio.Event().wait()

    for _ in range(4):
        runner.submit(hang, results.append)
    await settle()
    await runner.close()
    assert runner.in_flight == 0
    assert results == []
    assert runner.submit(hang, results.append) is False
    assert counts == {"dropped": 1}
    gc.collect()
    await settle()
    assert loop.reported == []


def test_submit_without_a_running_loop_is_counted_not_raised() -> None:
    counts, count = counting()
    runner = ShadowRunner(1, on_outcome=lambda o: count([o]))

    async def work() -> None:
        return None

    assert runner.submit(work, lambda _: None) is False
    assert counts == {"failed": 1}


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ShadowRunner(0)
