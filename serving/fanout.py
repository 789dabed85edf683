"""One request to every member at once: quorum, deadline and early exit, and nothing else.

:func:`fan_out` starts one call per member and waits until every call is back, the quorum can no
longer be met (the calls still out are then cancelled as not needed), or the deadline passes (the
calls still out are cut off). It answers a typed :class:`FanOut`: each member's answer or why it
failed, and which calls were cancelled and why. It records no metrics and combines nothing: the
caller does both from the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from contracts.manifest import MemberRef
from serving.members import MemberError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FanOutPolicy:
    """The deadlines of a fan-out (from the gateway settings)."""

    member_deadline_s: float = 2.0
    request_deadline_s: float = 5.0


@dataclass(frozen=True, slots=True)
class MemberFailure:
    """Why a member has no answer: a short metric label and one line of detail."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


@dataclass(frozen=True, slots=True)
class FanOut(Generic[T]):
    """What a fan-out came to, member by member (indexes follow the members' order)."""

    answers: list[T | None]
    """Each member's answer, None where there is none."""
    failures: dict[int, MemberFailure]
    """The members whose call ended without an answer, and why."""
    unfinished: list[int]
    """The members whose call was still out when the outcome was decided; they were cancelled."""
    deadline_passed: bool
    """The deadline decided the outcome: the unfinished calls were cut off. Otherwise every call
    was back, or the quorum could no longer be met and the unfinished ones were not needed."""

    @property
    def answered(self) -> list[bool]:
        return [answer is not None for answer in self.answers]


async def fan_out(
    members: Sequence[MemberRef],
    call: Callable[[MemberRef], Coroutine[Any, Any, T]],
    *,
    quorum: Callable[[Sequence[bool]], bool],
    deadline: float,
) -> FanOut[T]:
    """``call`` for every member at once, until all are back, ``quorum`` is lost, or ``deadline``.

    ``quorum`` says whether members that answered (True) make a quorum; ``deadline`` is on the
    running loop's clock. A MemberError from a call is that member's failure; any other exception
    too (logged: a bug in a caller must not turn into a failed request).
    """
    loop = asyncio.get_running_loop()
    tasks = {asyncio.create_task(call(member)): i for i, member in enumerate(members)}
    answers: list[T | None] = [None] * len(members)
    failures: dict[int, MemberFailure] = {}
    pending = set(tasks)
    # One callback per call decides when the outcome is known: every call is back, or even every
    # pending call answering could not make the quorum. (asyncio.wait in a loop would re-register
    # a callback on every pending call each time one answers.)
    decided: asyncio.Future[bool] = loop.create_future()

    def on_done(task: asyncio.Task[T]) -> None:
        pending.discard(task)
        if task.cancelled():
            return
        # Read every outcome, also one that arrives after the decision: an exception left unread
        # is logged by asyncio as "Task exception was never retrieved".
        error = task.exception()
        if decided.done():
            return
        index = tasks[task]
        if error is None:
            answers[index] = task.result()
        else:
            failures[index] = _failure(members[index], error)
        if not pending:
            decided.set_result(False)
        elif error is not None:
            could = [answers[i] is not None or t in pending for t, i in tasks.items()]
            if not quorum(could):
                decided.set_result(False)

    for task in tasks:
        task.add_done_callback(on_done)

    def deadline_passed() -> None:
        if not decided.done():
            decided.set_result(True)

    timer = loop.call_at(deadline, deadline_passed)
    try:
        cut_by_deadline = await decided
    finally:
        timer.cancel()
        for task in pending:
            task.cancel()
    return FanOut(answers, failures, sorted(tasks[t] for t in pending), cut_by_deadline)


def _failure(member: MemberRef, error: BaseException) -> MemberFailure:
    if isinstance(error, MemberError):
        return MemberFailure(error.reason, error.detail)
    log.error("unexpected error calling member %s", member.name, exc_info=error)
    return MemberFailure("error", f"{type(error).__name__}: {error}")
