"""The fan-out on its own: answers, failures, early exit once the quorum is lost, the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from contracts.manifest import MemberRef
from serving.fanout import FanOut, MemberFailure, fan_out
from serving.members import MemberError

MEMBERS = [MemberRef(name=f"m{i}", version=1, weight=1.0) for i in range(3)]


def at_least(n: int):
    return lambda answered: sum(answered) >= n


def run(
    behaviour: dict[str, float | Exception], quorum_of: int, deadline_in_s: float
) -> tuple[FanOut[str], list[str]]:
    """Each member answers its name after a delay, or raises; returns the result and who was cancelled."""
    cancelled: list[str] = []

    async def call(member: MemberRef) -> str:
        what = behaviour[member.name]
        if isinstance(what, Exception):
            raise what
        try:
            await asyncio.sleep(what)
        except asyncio.CancelledError:
            cancelled.append(member.name)
            raise
        return member.name

    async def scenario() -> FanOut[str]:
        deadline = asyncio.get_running_loop().time() + deadline_in_s
        result = await fan_out(MEMBERS, call, quorum=at_least(quorum_of), deadline=deadline)
        await asyncio.sleep(0)  # let cancellations land
        return result

    return asyncio.run(scenario()), cancelled


def test_every_member_answers() -> None:
    result, cancelled = run({"m0": 0.0, "m1": 0.01, "m2": 0.0}, quorum_of=2, deadline_in_s=5)
    assert result == FanOut(["m0", "m1", "m2"], {}, [], deadline_passed=False)
    assert result.answered == [True, True, True]
    assert cancelled == []


def test_once_the_quorum_is_lost_the_calls_still_out_are_not_needed() -> None:
    down = MemberError("unavailable", "connection refused")
    result, cancelled = run({"m0": down, "m1": down, "m2": 30.0}, quorum_of=2, deadline_in_s=60)
    assert result.answers == [None, None, None]
    assert result.failures == {
        0: MemberFailure("unavailable", "connection refused"),
        1: MemberFailure("unavailable", "connection refused"),
    }
    assert result.unfinished == [2]
    assert not result.deadline_passed
    assert cancelled == ["m2"]


def test_calls_still_out_at_the_deadline_are_cut_off() -> None:
    result, cancelled = run({"m0": 0.0, "m1": 30.0, "m2": 0.0}, quorum_of=2, deadline_in_s=0.2)
    assert result.answers == ["m0", None, "m2"]
    assert result.failures == {}
    assert result.unfinished == [1]
    assert result.deadline_passed
    assert cancelled == ["m1"]


def test_a_bug_in_a_call_is_that_members_failure_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    result, _ = run({"m0": RuntimeError("boom"), "m1": 0.0, "m2": 0.0}, quorum_of=2, deadline_in_s=5)
    assert result.answers == [None, "m1", "m2"]
    assert str(result.failures[0]) == "error (RuntimeError: boom)"
    assert [r.getMessage() for r in caplog.records] == ["unexpected error calling member m0"]


def test_the_quorum_is_asked_with_who_answered_or_still_could() -> None:
    seen: list[Sequence[bool]] = []

    def quorum(answered: Sequence[bool]) -> bool:
        seen.append(list(answered))
        return True

    async def call(member: MemberRef) -> str:
        if member.name == "m0":
            raise MemberError("deadline", "too slow")
        await asyncio.sleep(0.01)
        return member.name

    async def scenario() -> FanOut[str]:
        return await fan_out(MEMBERS, call, quorum=quorum, deadline=asyncio.get_running_loop().time() + 5)

    result = asyncio.run(scenario())
    assert result.answers == [None, "m1", "m2"]
    # Asked once, when m0 failed: m1 and m2 were still out and could answer.
    assert seen == [[False, True, True]]
