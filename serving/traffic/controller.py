"""The one object the serving core calls for champion vs challenger: route, record, summarise.

A :class:`TrafficController` holds, per ensemble with a traffic policy, its comparison window and
its shadow runner. The core asks :meth:`~TrafficController.route` where a request goes, answers it,
and hands the answer to :meth:`~TrafficController.answered` together with a callable that would get
the other side's answer; the controller decides whether that shadow call runs (fraction, limit),
runs it in the background and records the pair. :meth:`~TrafficController.update` swaps the
policies in while requests run (hot reload): a pair whose aliases did not change keeps its window.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from contracts.comparison import ComparisonSummary
from serving.errors import NotFound
from serving.traffic.comparison import ComparisonWindow, SideObservation
from serving.traffic.metrics import TrafficMetrics
from serving.traffic.policy import TrafficPolicy
from serving.traffic.routing import AS_ADDRESSED, Route, route
from serving.traffic.shadow import Outcome, ShadowRunner

log = logging.getLogger(__name__)

ShadowCall = Callable[[], Awaitable[SideObservation]]
"""Gets the shadow side's answer; it may raise, which records that side as failed."""


@dataclass(slots=True)
class _Lane:
    """One ensemble's policy, window and shadow runner."""

    policy: TrafficPolicy
    window: ComparisonWindow
    runner: ShadowRunner


class TrafficController:
    """Traffic policies of the served ensembles, their shadow calls and comparison windows."""

    def __init__(
        self,
        policies: Mapping[str, TrafficPolicy],
        registry: CollectorRegistry | None = None,
        *,
        shadow_timeout_s: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``registry`` is the gateway's (``GatewayMetrics.registry``); ``shadow_timeout_s`` bounds a
        shadow call on top of the core's own deadlines."""
        self._rng = rng or random.Random()
        self._clock = clock
        self._shadow_timeout_s = shadow_timeout_s
        self._lanes: dict[str, _Lane] = {}
        self._retired: list[ShadowRunner] = []
        self.metrics = TrafficMetrics(
            registry or CollectorRegistry(auto_describe=True),
            lambda: [lane.window for lane in list(self._lanes.values())],
        )
        self.update(policies)

    # --- policies ------------------------------------------------------------------------------
    def update(self, policies: Mapping[str, TrafficPolicy]) -> None:
        """Serve ``policies`` from now on; shadow calls in flight finish under the old ones."""
        lanes: dict[str, _Lane] = {}
        for ensemble, policy in policies.items():
            lane = self._lanes.get(ensemble)
            if lane is not None and (lane.policy.champion, lane.policy.challenger) == (
                policy.champion,
                policy.challenger,
            ):
                lane.policy = policy
                lane.window.resize(policy.window_requests, policy.window_s)
                lane.runner.limit = policy.shadow_concurrency
            else:
                lane = self._new_lane(ensemble, policy)
            lanes[ensemble] = lane
        kept = {id(lane.runner) for lane in lanes.values()}
        self._retired += [lane.runner for lane in self._lanes.values() if id(lane.runner) not in kept]
        self._retired = [runner for runner in self._retired if runner.in_flight]
        self._lanes = lanes

    def _new_lane(self, ensemble: str, policy: TrafficPolicy) -> _Lane:
        window = ComparisonWindow(
            ensemble,
            policy.champion,
            policy.challenger,
            max_requests=policy.window_requests,
            max_age_s=policy.window_s,
            clock=self._clock,
        )

        def count(outcome: Outcome) -> None:
            window.count_shadow(outcome)
            self.metrics.count_shadow(window, outcome)

        runner = ShadowRunner(policy.shadow_concurrency, timeout_s=self._shadow_timeout_s, on_outcome=count)
        return _Lane(policy, window, runner)

    def policy(self, ensemble: str) -> TrafficPolicy | None:
        lane = self._lanes.get(ensemble)
        return lane.policy if lane else None

    # --- the request path ----------------------------------------------------------------------
    def route(
        self,
        ensemble: str,
        *,
        label: str | None,
        version: int | None,
        headers: Mapping[str, str] | None,
        served: Mapping[str, int],
    ) -> Route:
        """Where a request goes. ``headers`` are lower-cased; ``served`` maps alias -> manifest version."""
        lane = self._lanes.get(ensemble)
        if lane is None:
            return AS_ADDRESSED
        policy = lane.policy
        key = (headers or {}).get(policy.sticky_header) or None
        decided = route(
            policy,
            ensemble=ensemble,
            label=label,
            version=version,
            key=key,
            served=served,
            canary_draw=self._rng.random(),
            shadow_draw=self._rng.random(),
        )
        if decided.label is not None:
            self.metrics.count_route(lane.window, decided.label)
        return decided

    def answered(
        self,
        ensemble: str,
        decided: Route,
        primary: SideObservation,
        shadow: ShadowCall | None = None,
    ) -> None:
        """Record the answer the client got and, if ``decided`` says so, shadow the other side.

        Returns at once: the shadow call runs in the background and never raises here.
        """
        lane = self._lanes.get(ensemble)
        if lane is None or decided.answer is None:
            return
        pair = {lane.policy.champion, lane.policy.challenger}
        if decided.label not in pair or (
            decided.shadow_label is not None and decided.shadow_label not in pair
        ):
            return  # routed under a policy that a reload replaced since: not this window's pair
        if decided.shadow is None or shadow is None:
            self._record(lane, decided, primary, None)
            return
        started = time.perf_counter()
        shadow_version = decided.shadow_version if decided.shadow_version is not None else primary.version

        def failed(exc: BaseException) -> None:
            elapsed = time.perf_counter() - started
            error = type(exc).__name__
            self._record(lane, decided, primary, SideObservation(shadow_version, elapsed, error=error))

        if not lane.runner.submit(shadow, lambda other: self._record(lane, decided, primary, other), failed):
            self._record(lane, decided, primary, None)

    def _record(
        self, lane: _Lane, decided: Route, primary: SideObservation, other: SideObservation | None
    ) -> None:
        champion, challenger = (primary, other) if decided.answer == "champion" else (other, primary)
        recorded = lane.window.record(champion, challenger)
        self.metrics.count_compared(lane.window, recorded)

    # --- reading ---------------------------------------------------------------------------------
    def summary(self, ensemble: str) -> ComparisonSummary:
        """The comparison of ``ensemble`` now; NotFound when it has no traffic policy."""
        lane = self._lanes.get(ensemble)
        if lane is None:
            known = ", ".join(sorted(self._lanes)) or "none"
            raise NotFound(f"no traffic policy for ensemble {ensemble!r} (policies: {known})")
        return lane.window.summary()

    async def close(self) -> None:
        """Cancel every shadow call in flight (gateway shutdown)."""
        for runner in [lane.runner for lane in self._lanes.values()] + self._retired:
            await runner.close()
