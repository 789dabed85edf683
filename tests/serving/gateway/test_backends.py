"""The gRPC member client against fake backends on 127.0.0.1: answers, replicas, hedging, breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from contracts.manifest import MemberRef
from serving.backends import BackendPool
from serving.core import ModelRef
from serving.ensemble import EnsembleCore
from serving.errors import Unavailable
from serving.manifest_source import ServedManifests
from serving.members import MemberError
from serving.metrics import GatewayMetrics
from serving.testing import free_port, make_manifest, member_answer, start_fake_backend, stop_process
from tests.serving.gateway.test_breaker import FakeClock

MEMBERS = ["toy-m0", "toy-m1"]


@pytest.fixture(scope="module")
def fast_backend() -> Iterator[str]:
    port = free_port()
    proc = start_fake_backend(port, MEMBERS)
    yield f"127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="module")
def slow_backend() -> Iterator[str]:
    port = free_port()
    proc = start_fake_backend(port, MEMBERS, delay_ms=3000)
    yield f"127.0.0.1:{port}"
    stop_process(proc)


def x_rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)}


def test_predict_metadata_and_status(fast_backend: str) -> None:
    async def scenario() -> None:
        pool = BackendPool(lambda member, _alias: [fast_backend])
        try:
            member = MemberRef(name="toy-m1", version=1, weight=1.0)
            inputs = x_rows(3)
            outputs = await pool.send(member, pool.prepare("serving_default", inputs, ()), 5.0)
            np.testing.assert_array_equal(outputs["probabilities"], member_answer("toy-m1", inputs["x"]))
            meta = await pool.metadata(member, 5.0)
            signature = meta.signature_def.signature_def["serving_default"]
            assert list(signature.inputs) == ["x"]
            assert await pool.available(member, 5.0)
            assert not await pool.available(MemberRef(name="toy-m1", version=9, weight=1.0), 5.0)
            other = MemberRef(name="other", version=1, weight=1.0)
            with pytest.raises(MemberError) as info:
                await pool.send(other, pool.prepare("", inputs, ()), 5.0)
            assert info.value.reason == "not_found"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_dead_replica_is_retried_on_its_sibling(fast_backend: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        pool = BackendPool(lambda member, _alias: [dead, fast_backend])
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):  # round robin starts on each replica in turn
                outputs = await pool.send(member, pool.prepare("serving_default", x_rows(2), ()), 5.0)
                assert outputs["probabilities"].shape == (2, 3)
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("hedge_after_s", [None, 0.05])
def test_hedging_answers_from_the_fast_replica(fast_backend: str, slow_backend: str, hedge_after_s) -> None:
    async def scenario() -> list[str]:
        pool = BackendPool(lambda member, _alias: [slow_backend, fast_backend], hedge_after_s=hedge_after_s)
        outcomes = []
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):
                try:
                    await pool.send(member, pool.prepare("serving_default", x_rows(1), ()), 1.0)
                    outcomes.append("ok")
                except MemberError as exc:
                    outcomes.append(exc.reason)
        finally:
            await pool.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    if hedge_after_s is None:
        assert outcomes.count("deadline") == 2  # every other call lands on the slow replica
    else:
        assert outcomes == ["ok"] * 4


def test_breaker_opens_after_consecutive_failures() -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def scenario() -> list[str]:
        pool = BackendPool(lambda member, _alias: [dead], breaker_failures=2, breaker_cooldown_s=60.0)
        reasons = []
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):
                with pytest.raises(MemberError) as info:
                    await pool.send(member, pool.prepare("serving_default", x_rows(1), ()), 2.0)
                reasons.append(info.value.reason)
        finally:
            await pool.close()
        return reasons

    assert asyncio.run(scenario()) == ["unavailable", "unavailable", "circuit_open", "circuit_open"]


def test_breakers_are_per_member_version(fast_backend: str) -> None:
    # The backend serves version 1 only: version 2 of the same member answers NOT_FOUND, as an old
    # version does on a backend that has unloaded it during a promotion.
    async def scenario() -> list[str]:
        pool = BackendPool(lambda member, _alias: [fast_backend], breaker_failures=3, breaker_cooldown_s=60.0)
        loaded = MemberRef(name="toy-m0", version=1, weight=1.0)
        gone = MemberRef(name="toy-m0", version=2, weight=1.0)
        outcomes = []
        try:
            # 4:1 traffic: the loaded version's successes never reset the other's count...
            for _ in range(4):
                for _ in range(4):
                    await pool.send(loaded, pool.prepare("serving_default", x_rows(1), ()), 5.0)
                    outcomes.append("v1 ok")
                with pytest.raises(MemberError) as info:
                    await pool.send(gone, pool.prepare("serving_default", x_rows(1), ()), 5.0)
                outcomes.append(f"v2 {info.value.reason}")
            # ...and the failing version's open breaker never refuses the loaded one.
            assert pool.breakers_open(gone)
            assert not pool.breakers_open(loaded)
            outputs = await pool.send(loaded, pool.prepare("serving_default", x_rows(2), ()), 5.0)
            assert outputs["probabilities"].shape == (2, 3)
        finally:
            await pool.close()
        return [o for o in outcomes if o.startswith("v2")]

    assert asyncio.run(scenario()) == ["v2 not_found"] * 3 + ["v2 circuit_open"]


def test_an_alias_placed_on_its_own_backends_has_its_own_routes_and_breakers(fast_backend: str) -> None:
    # Champion and challenger serve the SAME member version; the challenger's backend is dead.
    dead = f"127.0.0.1:{free_port()}"
    placement = {"champion": [fast_backend], "challenger": [dead]}

    async def scenario() -> None:
        pool = BackendPool(lambda member, alias: placement[alias or "champion"], breaker_failures=2)
        champion = MemberRef(name="toy-m0", version=1, weight=1.0)
        challenger = MemberRef(name="toy-m0", version=1, weight=1.0)
        pool.place([("champion", champion), ("challenger", challenger)])
        try:
            for _ in range(3):
                with pytest.raises(MemberError):
                    await pool.send(challenger, pool.prepare("serving_default", x_rows(1), ()), 2.0)
            assert pool.breakers_open(challenger)
            assert not pool.breakers_open(champion)  # the challenger's breaker is not the champion's
            outputs = await pool.send(champion, pool.prepare("serving_default", x_rows(2), ()), 5.0)
            np.testing.assert_array_equal(outputs["probabilities"], member_answer("toy-m0", x_rows(2)["x"]))
            assert await pool.available(champion, 5.0)
            assert not await pool.available(challenger, 2.0)
            # A ref the pool was never told about goes where no alias is placed.
            unplaced = MemberRef(name="toy-m0", version=1, weight=1.0)
            assert not pool.breakers_open(unplaced)
            # Retiring the challenger's manifest drops its placement and its breakers with it.
            pool.retain([champion])
            assert not pool.breakers_open(champion)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_breakers_are_per_backend_address_and_gauges_follow_the_clock(fast_backend: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    clock = FakeClock()
    metrics = GatewayMetrics()

    def gauge(address: str) -> float | None:
        labels = {"member": "toy-m0", "version": "1", "backend": address}
        return metrics.registry.get_sample_value("ensemble_member_breaker_open", labels)

    async def scenario() -> None:
        pool = BackendPool(
            lambda member, _alias: [dead, fast_backend],
            breaker_failures=2,
            breaker_cooldown_s=5.0,
            metrics=metrics,
            clock=clock,
        )
        member = MemberRef(name="toy-m0", version=1, weight=1.0)
        try:
            # Every other call starts on the dead replica and is retried on the live one.
            for _ in range(6):
                outputs = await pool.send(member, pool.prepare("serving_default", x_rows(1), ()), 5.0)
                assert outputs["probabilities"].shape == (1, 3)
            assert (gauge(dead), gauge(fast_backend)) == (1.0, 0.0)
            assert not pool.breakers_open(member)  # the member is still reachable
            assert await pool.available(member, 5.0)
            # No call since: the cooldown passing alone turns the gauge back to 0 (half-open).
            clock.now += 5.0
            assert gauge(dead) == 0.0
            # A switch to manifests without this version drops its breakers and their gauges.
            pool.retain([MemberRef(name="toy-m1", version=1, weight=1.0)])
            assert gauge(dead) is None
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_errors_the_request_caused_never_open_a_breaker(fast_backend: str) -> None:
    # A request larger than the backend accepts (its gRPC limit is 4 MiB: RESOURCE_EXHAUSTED) and
    # one the model refuses (INVALID_ARGUMENT) say nothing about the member.
    async def scenario() -> list[str]:
        pool = BackendPool(lambda member, _alias: [fast_backend], breaker_failures=2, breaker_cooldown_s=60.0)
        member = MemberRef(name="toy-m1", version=1, weight=1.0)
        oversized = {"x": np.zeros((300_000, 4), np.float32)}
        reasons = []
        try:
            for inputs in (oversized, {"y": np.zeros((1, 4), np.float32)}) * 3:
                with pytest.raises(MemberError) as info:
                    await pool.send(member, pool.prepare("serving_default", inputs, ()), 5.0)
                reasons.append(info.value.reason)
            assert not pool.breakers_open(member)
            outputs = await pool.send(member, pool.prepare("serving_default", x_rows(1), ()), 5.0)
            np.testing.assert_array_equal(outputs["probabilities"], member_answer("toy-m1", x_rows(1)["x"]))
        finally:
            await pool.close()
        return reasons

    assert asyncio.run(scenario()) == ["resource_exhausted", "invalid_argument"] * 3


def test_readiness_fails_while_the_quorum_is_behind_open_breakers() -> None:
    # Members that report AVAILABLE but fail every call: /readyz must not stay ready while every
    # request fails on open breakers, and must come back once the cooldown lets a probe through.
    port = free_port()
    proc = start_fake_backend(port, ["toy-m0", "toy-m1", "toy-m2"], fail_rate=1.0)
    clock = FakeClock()

    async def scenario() -> None:
        pool = BackendPool(
            lambda m, _alias: [f"127.0.0.1:{port}"], breaker_failures=2, breaker_cooldown_s=5.0, clock=clock
        )
        core = EnsembleCore(ServedManifests(default=make_manifest()), pool)
        try:
            assert (await core.ready())[0]
            # Two failed calls per member open every breaker (called one by one: in a fan-out the
            # last member's call may be cancelled once the quorum is lost, which is no failure).
            for member in core.served.default.members:
                for _ in range(2):
                    with pytest.raises(MemberError, match="injected failure"):
                        await pool.send(member, pool.prepare("serving_default", x_rows(1), ()), 5.0)
            with pytest.raises(Unavailable, match="circuit_open"):
                await core.predict(ModelRef("toy"), {"x": x_rows(1)["x"]})
            ready, why = await core.ready()
            assert not ready
            assert "0/3 members AVAILABLE with a breaker not open" in why
            statuses = await core.status(ModelRef("toy"))
            assert [(s.state, s.error_code) for s in statuses] == [("UNKNOWN", "UNAVAILABLE")]
            clock.now += 5.0  # half-open: a probe may go, so the members count again
            assert (await core.ready())[0]
        finally:
            await pool.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_process(proc)
