"""Promotion and rollback under continuous REST and gRPC load, with the real chain of polls: zero failures.

Real processes on 127.0.0.1, as deployed, with shortened poll intervals
(:func:`bench.stack.promotion_stack`):

- ``mlflow server`` holding two registered versions of a 2-member ensemble (real Keras SavedModels);
- per member, its own ``ensemble backend`` (the local stand-in for TF Serving: rereads
  ``models.config`` every second, rescans the disk every second) on its own model repository,
  filled by its own ``ensemble sync --watch``;
- ``ensemble serve`` following ``champion``, each member on its own backend.

The quorum is both members, so a single member call that fails is a failed request. Promote
with immediate labels, then roll back with ``--staged-labels``: every request must
be answered, each by one of the two ensembles exactly, and each old version must still be on
disk when the gateway has moved on (make before break), then pruned.

``bench/promotion_trial.py`` runs the same at the shipped poll intervals.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import numpy as np
import pytest

from bench.stack import (
    MlflowServer,
    Outcome,
    PollChain,
    PromotionStack,
    move_alias,
    promotion_stack,
    register_tiny_versions,
    run_load,
    start_syncs,
    stop_syncs,
)
from registry.sync import minimum_grace_s

pytestmark = pytest.mark.slow

NAME = "underload"  # its own name: the MLflow server is shared by the session

# The chain of polls, shortened: sync every 0.5 s, backends reread the config every 1 s, the
# gateway polls every 0.5 s with a 3 s request deadline; 5 s allowed for loading. --backend
# keeps an old version until the new one is AVAILABLE anyway.
CHAIN = PollChain(
    sync_interval_s=0.5,
    backend_config_poll_s=1,
    gateway_poll_s=0.5,
    request_deadline_s=3.0,
    member_deadline_s=2.0,
    grace_s=minimum_grace_s(
        sync_interval_s=0.5, backend_config_poll_s=1, load_s=5.0, gateway_poll_s=0.5, request_deadline_s=3.0
    ),
)
MOVE_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def stack(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromotionStack]:
    root = tmp_path_factory.mktemp("promotion")
    expected = register_tiny_versions(NAME, mlflow_server.uri, root)
    with promotion_stack(NAME, mlflow_server.uri, root, CHAIN, expected) as deploy:
        yield deploy


@pytest.mark.timeout(1800)
def test_promote_and_rollback_under_load_fail_nothing(stack: PromotionStack) -> None:
    async def scenario(outcomes: list[Outcome]) -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(stack, stop, outcomes))
        try:
            # Promote with immediate labels, then roll back with staged ones: each way of moving
            # the labels, and each direction of the alias, once (bench/promotion_trial.py moves
            # the alias four times at the shipped intervals).
            for extra, (command, to, left) in (
                ((), (["promote", NAME, "--version", "2", "--alias", "champion"], 2, 1)),
                (("--staged-labels",), (["rollback", NAME, "--alias", "champion"], 1, 2)),
            ):
                await asyncio.to_thread(start_syncs, stack, *extra)
                await asyncio.sleep(1.0)
                move = await move_alias(stack, outcomes, command, to, left, MOVE_TIMEOUT_S)
                # Make before break: the gateway had moved on before the old version left.
                assert move.old_on_disk_when_switched, move
                await asyncio.sleep(1.5)  # the backends unload it; the load goes on meanwhile
                await asyncio.to_thread(stop_syncs, stack)
        finally:
            stop.set()
            await load

    outcomes: list[Outcome] = []
    asyncio.run(scenario(outcomes))
    failures = [o for o in outcomes if not o.ok]
    assert not failures, collections.Counter(f"{o.protocol}: {o.error[:160]}" for o in failures)
    assert len(outcomes) > 200
    assert {o.protocol for o in outcomes} == {"rest", "grpc"}
    assert {o.members for o in outcomes} == {"2/2"}
    for outcome in outcomes:
        assert outcome.answer is not None
        np.testing.assert_allclose(outcome.answer, stack.expected[int(outcome.version)], atol=1e-5)
    assert {o.version for o in outcomes} == {"1", "2"}
