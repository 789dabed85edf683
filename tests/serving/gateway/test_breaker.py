"""The per-member circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from serving.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state.value == "open"
    assert not breaker.allow()


def test_half_open_lets_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state.value == "closed"
    assert breaker.allow()


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, cooldown_s=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()
    breaker.record_inconclusive()
    assert breaker.allow()  # a cancelled probe frees the slot for the next one
