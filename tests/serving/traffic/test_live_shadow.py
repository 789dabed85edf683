"""Shadow isolation with real member backends over gRPC: a slow or dead challenger never touches the client.

The core is wired to the controller here the way the gateway will wire it (route, answer, hand the
answer and a shadow call to the controller), around the real :class:`EnsembleCore` and
:class:`BackendPool`, with the champion's and the challenger's members on separate fake TF Serving
processes.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest

from contracts.manifest import Manifest, OutputKind
from serving.backends import BackendPool
from serving.core import ModelRef
from serving.ensemble import EnsembleCore, FanOutPolicy
from serving.manifest_source import ServedManifests, served_version
from serving.members import MemberError
from serving.testing import free_port, make_manifest, start_fake_backend, stop_process
from serving.traffic.comparison import SideObservation
from serving.traffic.controller import TrafficController
from serving.traffic.policy import TrafficPolicy
from tests.serving.gateway.test_ensemble import offline, rows
from tests.serving.traffic.helpers import until

pytestmark = pytest.mark.slow

CHAMPION = make_manifest((0.5, 0.3, 0.2), name="toy", version=1)
# The challenger's members are other models (other answers) on their own backend.
CHALLENGER = make_manifest((0.2, 0.3, 0.5), name="toyc", version=2).model_copy(update={"name": "toy"})
KINDS: dict[str, OutputKind] = {spec.name: spec.kind for spec in CHAMPION.outputs}


def members(manifest: Manifest) -> list[str]:
    return [m.name for m in manifest.members]


@pytest.fixture
def champion_backend() -> Iterator[str]:
    port = free_port()
    proc = start_fake_backend(port, members(CHAMPION))
    yield f"127.0.0.1:{port}"
    stop_process(proc)


def unread_outside_the_fan_out(reported: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the loop reported, less member failures the core's fan-out leaves unread.

    When a quorum is already lost, ``EnsembleCore`` stops reading the member calls that fail after
    that moment; asyncio reports those as never retrieved. They are the core's, raised the same
    way without any shadow call, so they are set aside here; everything else must be absent.
    """
    return [r for r in reported if not isinstance(r.get("exception"), MemberError)]


class Stack:
    """The core with both aliases served, the controller, and what the event loop reported."""

    def __init__(self, champion_address: str, challenger_address: str, policy: TrafficPolicy) -> None:
        champion_members = set(members(CHAMPION))
        self.pool = BackendPool(
            lambda member: [champion_address if member in champion_members else challenger_address]
        )
        served = ServedManifests(default=CHAMPION, labels={"champion": CHAMPION, "challenger": CHALLENGER})
        self.core = EnsembleCore(
            served, self.pool, policy=FanOutPolicy(member_deadline_s=60.0, request_deadline_s=60.0)
        )
        self.controller = TrafficController({"toy": policy}, shadow_timeout_s=60.0)
        self.reported: list[dict[str, Any]] = []

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        """Run ``scenario`` on a fresh event loop, then close everything and collect dead tasks."""

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(
                lambda _loop, context: self.reported.append(context)
            )
            try:
                await scenario()
            finally:
                await self.controller.close()
                await self.pool.close()
            gc.collect()  # a task that ended with an unread exception is reported when collected
            await asyncio.sleep(0)

        asyncio.run(main())

    async def side(self, label: str, x: np.ndarray) -> SideObservation:
        started = time.perf_counter()
        result = await self.core.predict(ModelRef("toy", label=label), {"x": x})
        return SideObservation(result.version, time.perf_counter() - started, result.outputs, KINDS)

    async def ask(self, x: np.ndarray, key: str | None = None) -> np.ndarray:
        """One client request, as the gateway will serve it."""
        served = {alias: served_version(m) for alias, m in self.core.served.labels.items()}
        headers = {"x-user-id": key} if key else {}
        decided = self.controller.route("toy", label=None, version=None, headers=headers, served=served)
        assert decided.label is not None
        primary = await self.side(decided.label, x)
        shadow_label = decided.shadow_label
        self.controller.answered(
            "toy",
            decided,
            primary,
            (lambda: self.side(shadow_label, x)) if shadow_label is not None else None,
        )
        assert primary.outputs is not None
        return primary.outputs["probabilities"]


def test_a_slow_challenger_costs_the_client_nothing_and_its_shadows_are_dropped(
    champion_backend: str,
) -> None:
    challenger_port = free_port()
    challenger = start_fake_backend(challenger_port, members(CHALLENGER), delay_ms=30_000)
    stack = Stack(
        champion_backend,
        f"127.0.0.1:{challenger_port}",
        TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=3),
    )

    async def scenario() -> None:
        gate = asyncio.Semaphore(6)

        async def client(i: int) -> None:
            async with gate:
                x = rows(3, seed=i)
                np.testing.assert_allclose(await stack.ask(x), offline(CHAMPION, x), atol=1e-6)

        await asyncio.gather(*(client(i) for i in range(24)))
        summary = stack.controller.summary("toy")
        # Every client has its answer while all three shadow calls are still waiting on the
        # challenger (30 s each): nobody waited for them, and the rest were dropped, not queued.
        assert (summary.shadow.answered, summary.shadow.failed, summary.shadow.dropped) == (0, 0, 21)
        assert summary.champion.requests == 21
        assert summary.champion.errors == 0

    try:
        stack.run(scenario)
    finally:
        stop_process(challenger)
    assert stack.reported == []


def test_a_dead_challenger_fails_no_champion_request(champion_backend: str) -> None:
    challenger_port = free_port()
    challenger = start_fake_backend(challenger_port, members(CHALLENGER))
    stack = Stack(
        champion_backend,
        f"127.0.0.1:{challenger_port}",
        TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=64),
    )
    inputs = [rows(4, seed=100 + i) for i in range(40)]

    def shadows_ended() -> int:
        shadow = stack.controller.summary("toy").shadow
        return shadow.answered + shadow.failed + shadow.dropped

    async def scenario() -> None:
        for x in inputs[:20]:
            np.testing.assert_allclose(await stack.ask(x), offline(CHAMPION, x), atol=1e-6)
        await until(lambda: shadows_ended() >= 20)
        alive = stack.controller.summary("toy")
        assert (alive.compared, alive.shadow.answered) == (20, 20)
        both = np.concatenate(inputs[:20])
        expected = np.mean(np.argmax(offline(CHAMPION, both), 1) == np.argmax(offline(CHALLENGER, both), 1))
        assert alive.classification is not None
        assert alive.classification.agreement == pytest.approx(expected, abs=1e-12)

        challenger.send_signal(signal.SIGKILL)
        challenger.wait(timeout=10)
        for x in inputs[20:]:
            np.testing.assert_allclose(await stack.ask(x), offline(CHAMPION, x), atol=1e-6)
        await until(lambda: shadows_ended() >= 40)
        dead = stack.controller.summary("toy")
        assert dead.champion.requests == 40
        assert dead.champion.errors == 0
        assert dead.shadow.answered == 20
        assert dead.shadow.failed >= 1
        assert dead.shadow.failed + dead.shadow.dropped == 20
        assert dead.challenger.errors == dead.shadow.failed
        assert dead.compared == 20, "the dead challenger's failures are not compared rows"

    try:
        stack.run(scenario)
    finally:
        stop_process(challenger)
    assert unread_outside_the_fan_out(stack.reported) == []
