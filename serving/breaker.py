"""A circuit breaker per member version and backend address: stop calling a replica that keeps failing.

Closed: calls go through; ``failures`` consecutive failures open it. Open: calls are refused
without touching the network until ``cooldown_s`` has passed. Half-open: one probe call goes
through; its success closes the breaker, its failure opens it for another cooldown.

The state is a function of the clock, not of the last call: an open breaker whose cooldown has
passed reads half-open at once, even when no call has come since (gauges and readiness read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker; single event loop, so no locking is needed."""

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def is_open(self) -> bool:
        """Whether every call is refused right now (open, cooldown not over)."""
        return self._opened_at is not None and self._clock() - self._opened_at < self._cooldown_s

    def open_gauge(self) -> float:
        """1.0 while open, else 0.0: what the breaker gauge reads at scrape time."""
        return 1.0 if self.is_open else 0.0

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only one probe at a time may."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive_failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self._consecutive_failures >= self._threshold:
            self._opened_at = self._clock()

    def record_inconclusive(self) -> None:
        """A call that says nothing about the replica: cancelled by us, or refused for the request's fault."""
        self._probe_in_flight = False
