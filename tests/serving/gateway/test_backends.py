"""The gRPC member client against fake backends on 127.0.0.1: answers, replicas, hedging, breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from registry.manifest import MemberRef
from serving.backends import BackendPool
from serving.ensemble import MemberError
from tests.conftest import free_port
from tests.serving.gateway.helpers import member_answer, start_fake_backend, stop_process

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
        pool = BackendPool(lambda member: [fast_backend])
        try:
            member = MemberRef(name="toy-m1", version=1, weight=1.0)
            inputs = x_rows(3)
            outputs = await pool.predict(member, "serving_default", inputs, (), 5.0)
            np.testing.assert_array_equal(outputs["probabilities"], member_answer("toy-m1", inputs["x"]))
            meta = await pool.metadata(member, 5.0)
            signature = meta.signature_def.signature_def["serving_default"]
            assert list(signature.inputs) == ["x"]
            assert await pool.available(member, 5.0)
            assert not await pool.available(MemberRef(name="toy-m1", version=9, weight=1.0), 5.0)
            with pytest.raises(MemberError) as info:
                await pool.predict(MemberRef(name="other", version=1, weight=1.0), "", inputs, (), 5.0)
            assert info.value.reason == "not_found"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_dead_replica_is_retried_on_its_sibling(fast_backend: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        pool = BackendPool(lambda member: [dead, fast_backend])
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):  # round robin starts on each replica in turn
                outputs = await pool.predict(member, "serving_default", x_rows(2), (), 5.0)
                assert outputs["probabilities"].shape == (2, 3)
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("hedge_after_s", [None, 0.05])
def test_hedging_answers_from_the_fast_replica(fast_backend: str, slow_backend: str, hedge_after_s) -> None:
    async def scenario() -> list[str]:
        pool = BackendPool(lambda member: [slow_backend, fast_backend], hedge_after_s=hedge_after_s)
        outcomes = []
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):
                try:
                    await pool.predict(member, "serving_default", x_rows(1), (), 1.0)
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
        pool = BackendPool(lambda member: [dead], breaker_failures=2, breaker_cooldown_s=60.0)
        reasons = []
        try:
            member = MemberRef(name="toy-m0", version=1, weight=1.0)
            for _ in range(4):
                with pytest.raises(MemberError) as info:
                    await pool.predict(member, "serving_default", x_rows(1), (), 2.0)
                reasons.append(info.value.reason)
        finally:
            await pool.close()
        return reasons

    assert asyncio.run(scenario()) == ["unavailable", "unavailable", "circuit_open", "circuit_open"]
