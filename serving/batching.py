"""Micro-batching: concurrent requests coalesced into one fan-out, answers split back per request.

Requests with the same key (same manifest, outputs and input shapes) are concatenated along the
batch dimension, up to ``max_batch_size`` rows, and answered by one call per member; each request
gets its own rows back. The batching adapts to load: when no batch with that key is in flight, a
request goes out at once (with whatever arrived in the same event-loop turn), so an idle gateway
adds no delay; while batches are in flight, requests gather until one comes back or
``max_delay_s`` passes, whichever is first. With ``max_in_flight`` set, once that many batches
with the key are out, the next one gathers until one of them comes back, whatever the delay: a
backend that executes one call at a time (TF Serving on a GPU) then gets a few large calls instead
of a queue of small ones. A full batch goes out at once regardless, and so does a request of
``max_batch_size`` rows or more, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np


class HasOutputs(Protocol):
    @property
    def outputs(self) -> dict[str, np.ndarray]: ...


AnswerT = TypeVar("AnswerT", bound=HasOutputs)
RunBatch = Callable[[dict[str, np.ndarray], float], Awaitable[AnswerT]]
"""Answers the concatenated inputs before the given loop-time deadline."""


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How requests are coalesced (the gateway settings hold the defaults); see the module docstring."""

    max_batch_size: int
    max_delay_s: float
    max_in_flight: int = 0
    """0: no cap, only ``max_delay_s`` paces the batches."""


@dataclass(slots=True)
class _Waiting(Generic[AnswerT]):
    inputs: Mapping[str, np.ndarray]
    rows: int
    deadline: float
    future: asyncio.Future[tuple[dict[str, np.ndarray], AnswerT]]


@dataclass(slots=True)
class _Batch(Generic[AnswerT]):
    run: RunBatch[AnswerT]
    waiting: list[_Waiting[AnswerT]] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.Handle | None = None


class MicroBatcher(Generic[AnswerT]):
    """Coalesces concurrent submissions with the same key; one event loop, no locks."""

    def __init__(self, policy: BatchingPolicy, on_batch: Callable[[int], None] | None = None) -> None:
        self._max_rows = policy.max_batch_size
        self._max_delay_s = policy.max_delay_s
        self._max_in_flight = policy.max_in_flight
        self._on_batch = on_batch
        self._open: dict[Hashable, _Batch[AnswerT]] = {}
        self._in_flight: dict[Hashable, int] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def submit(
        self,
        key: Hashable,
        inputs: Mapping[str, np.ndarray],
        run: RunBatch[AnswerT],
        deadline: float,
    ) -> tuple[dict[str, np.ndarray], AnswerT]:
        """This request's rows of the batch answer, and the batch answer itself."""
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        if rows >= self._max_rows or rows == 0:
            answer = await run(dict(inputs), deadline)
            return answer.outputs, answer
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > self._max_rows:
            self._flush(key, batch)
            batch = None
        if batch is None:
            batch = _Batch(run=run)
            self._open[key] = batch
            if not self._in_flight.get(key, 0):
                batch.timer = loop.call_soon(self._flush, key, batch)
            elif self._slot_free(key):
                batch.timer = loop.call_later(self._max_delay_s, self._delay_passed, key, batch)
            # else: it goes out when an in-flight batch comes back (see _finished)
        future: asyncio.Future[tuple[dict[str, np.ndarray], AnswerT]] = loop.create_future()
        batch.waiting.append(_Waiting(inputs, rows, deadline, future))
        batch.rows += rows
        if batch.rows >= self._max_rows:
            self._flush(key, batch)
        return await future

    def _slot_free(self, key: Hashable) -> bool:
        return not self._max_in_flight or self._in_flight.get(key, 0) < self._max_in_flight

    def _delay_passed(self, key: Hashable, batch: _Batch[AnswerT]) -> None:
        batch.timer = None
        if self._slot_free(key):  # full batches may have taken the free slots meanwhile
            self._flush(key, batch)

    def _flush(self, key: Hashable, batch: _Batch[AnswerT]) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: Hashable, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        left = self._in_flight.get(key, 1) - 1
        if left:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        # The backends are free again (or, with max_in_flight, a slot is): what gathered meanwhile
        # goes out now, not at its timer.
        waiting = self._open.get(key)
        if waiting is not None and (not left or (self._max_in_flight and left < self._max_in_flight)):
            self._flush(key, waiting)

    async def _run(self, batch: _Batch[AnswerT]) -> None:
        # Requests whose callers went away (cancelled) are left out of the backend call.
        waiting = [w for w in batch.waiting if not w.future.done()]
        if not waiting:
            return
        if self._on_batch is not None:
            self._on_batch(len(waiting))
        names = list(waiting[0].inputs)
        inputs = {name: np.concatenate([w.inputs[name] for w in waiting]) for name in names}
        # The batch waits as long as its most patient request; each request still enforces its own.
        deadline = max(w.deadline for w in waiting)
        try:
            answer = await batch.run(inputs, deadline)
        except Exception as exc:
            for w in waiting:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for w in waiting:
                w.future.cancel()
            raise
        start = 0
        for w in waiting:
            stop = start + w.rows
            if not w.future.done():
                w.future.set_result(({k: v[start:stop] for k, v in answer.outputs.items()}, answer))
            start = stop
