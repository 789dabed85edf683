"""Shadow isolation with real member backends over gRPC: a slow or dead challenger never touches the client.

The core is wired to the controller as the gateway wires it (``EnsembleCore(traffic=...)``: route,
answer, hand the answer and a shadow call to the controller), around the real :class:`BackendPool`,
with the champion's and the challenger's members on separate fake TF Serving processes.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml

from contracts.comparison import ComparisonSummary
from contracts.manifest import Manifest, OutputKind
from registry.online_gate import OnlineThresholds, fetch_evidence, online_gate
from serving.app import create_app, create_grpc_server
from serving.backends import BackendPool
from serving.core import ModelRef, PredictResult
from serving.ensemble import EnsembleCore
from serving.errors import Unavailable
from serving.fanout import FanOutPolicy
from serving.gateway import Gateway
from serving.manifest_source import RegistryManifestSource, ServedManifests, served_version
from serving.rest.server import uvicorn_server
from serving.settings import GatewaySettings
from serving.testing import free_port, grpc_predict, make_manifest, start_fake_backend, stop_process
from serving.traffic.controller import TrafficController
from serving.traffic.policy import TrafficPolicy
from serving.traffic.routing import ALIAS_HEADER
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


@pytest.fixture
def stack_with(champion_backend: str) -> Iterator[Callable[..., tuple[Stack, subprocess.Popen[str]]]]:
    """Builds a :class:`Stack` under ``policy`` with the challenger's members on a backend of their
    own (answering after ``delay_ms``); the backends are stopped after the test."""
    started: list[subprocess.Popen[str]] = []

    def make(policy: TrafficPolicy, delay_ms: int = 0) -> tuple[Stack, subprocess.Popen[str]]:
        port = free_port()
        started.append(start_fake_backend(port, members(CHALLENGER), delay_ms=delay_ms))
        return Stack(champion_backend, f"127.0.0.1:{port}", policy), started[-1]

    yield make
    for proc in started:
        stop_process(proc)


class Stack:
    """The core with both aliases served, the controller, and what the event loop reported."""

    def __init__(self, champion_address: str, challenger_address: str, policy: TrafficPolicy) -> None:
        champion_members = set(members(CHAMPION))
        self.pool = BackendPool(
            lambda member, _alias: [champion_address if member in champion_members else challenger_address]
        )
        served = ServedManifests(default=CHAMPION, labels={"champion": CHAMPION, "challenger": CHALLENGER})
        self.controller = TrafficController({"toy": policy}, shadow_timeout_s=60.0)
        self.core = EnsembleCore(
            served,
            self.pool,
            policy=FanOutPolicy(member_deadline_s=60.0, request_deadline_s=60.0),
            traffic=self.controller,
        )
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
        assert self.reported == [], "nothing the shadow calls did reached the event loop's handler"

    async def ask(self, x: np.ndarray, key: str | None = None) -> np.ndarray:
        """One client request through the core, which routes it; asserts the alias it names."""
        result = await self.ask_result(x, key)
        assert result.outputs is not None
        return result.outputs["probabilities"]

    async def ask_result(self, x: np.ndarray, key: str | None = None) -> PredictResult:
        headers = {"x-user-id": key} if key else {}
        result = await self.core.predict(ModelRef("toy"), {"x": x}, request_headers=headers)
        alias = result.headers[ALIAS_HEADER]
        assert result.version == served_version(CHAMPION if alias == "champion" else CHALLENGER)
        return result


def test_a_slow_challenger_costs_the_client_nothing_and_its_shadows_are_dropped(
    stack_with: Callable[..., tuple[Stack, subprocess.Popen[str]]],
) -> None:
    stack, _ = stack_with(TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=3), delay_ms=30_000)

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

    stack.run(scenario)


def test_a_dead_challenger_fails_no_champion_request(
    stack_with: Callable[..., tuple[Stack, subprocess.Popen[str]]],
) -> None:
    stack, challenger = stack_with(TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=64))
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

    stack.run(scenario)


def test_the_core_routes_a_sticky_canary_and_names_the_alias(
    stack_with: Callable[..., tuple[Stack, subprocess.Popen[str]]],
) -> None:
    stack, _ = stack_with(TrafficPolicy(canary_percent=20.0))
    x = rows(2, seed=7)
    keys = [f"user-{i}" for i in range(60)]

    async def scenario() -> None:
        first = {key: (await stack.ask_result(x, key)).headers[ALIAS_HEADER] for key in keys}
        again = {key: (await stack.ask_result(x, key)).headers[ALIAS_HEADER] for key in keys}
        assert first == again, "a key stays on its side"
        on_challenger = [key for key, alias in first.items() if alias == "challenger"]
        assert 3 <= len(on_challenger) <= 24, "about 20% of 60 keys"
        for key, alias in first.items():
            expected = offline(CHALLENGER if alias == "challenger" else CHAMPION, x)
            np.testing.assert_allclose(await stack.ask(x, key), expected, atol=1e-6)
        # A request that names a version is answered as addressed: no alias header.
        pinned = await stack.core.predict(ModelRef("toy", version=1), {"x": x})
        assert ALIAS_HEADER not in pinned.headers
        summary = stack.controller.summary("toy")
        assert summary.challenger.requests == 3 * len(on_challenger)
        assert summary.champion.requests == 3 * (len(keys) - len(on_challenger))

    stack.run(scenario)


def test_a_failed_canary_answer_is_the_challengers_error(
    stack_with: Callable[..., tuple[Stack, subprocess.Popen[str]]],
) -> None:
    stack, challenger = stack_with(TrafficPolicy(canary_percent=100.0))
    challenger.send_signal(signal.SIGKILL)
    challenger.wait(timeout=10)

    async def scenario() -> None:
        with pytest.raises(Unavailable):
            await stack.ask(rows(2))
        summary = stack.controller.summary("toy")
        assert (summary.challenger.requests, summary.challenger.errors) == (1, 1)
        # Named by label, the champion still answers.
        named = await stack.core.predict(ModelRef("toy", label="champion"), {"x": rows(2)})
        assert named.headers[ALIAS_HEADER] == "champion"

    stack.run(scenario)


def registry_gateway(settings: GatewaySettings) -> Gateway:
    """The whole gateway in this process, serving both aliases as the registry would answer them."""
    by_alias = {"champion": CHAMPION, "challenger": CHALLENGER}
    served = ServedManifests(default=CHAMPION, labels=by_alias)
    source = RegistryManifestSource(
        settings.tracking_uri or "", "toy", settings.aliases, resolve=lambda _u, _e, alias: by_alias[alias]
    )
    return Gateway(settings, source, served)


def member_backends(champion_address: str, challenger_address: str) -> dict[str, list[str]]:
    backends = {m: [champion_address] for m in members(CHAMPION)}
    return backends | {m: [challenger_address] for m in members(CHALLENGER)}


def test_the_gateway_serves_the_comparison_that_the_online_gate_reads(champion_backend: str) -> None:
    """The whole gateway (settings, controller, REST app) on a real port, with shadow on."""
    challenger_port = free_port()
    challenger = start_fake_backend(challenger_port, members(CHALLENGER))
    settings = GatewaySettings(
        tracking_uri="http://127.0.0.1:1",  # never asked: the manifests are handed in below
        ensemble="toy",
        aliases=["champion", "challenger"],
        member_backends=member_backends(champion_backend, f"127.0.0.1:{challenger_port}"),
        traffic={"toy": TrafficPolicy(shadow_fraction=1.0, window_requests=100)},
    )
    gateway = registry_gateway(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inputs = [rows(2, seed=200 + i) for i in range(30)]

    async def scenario() -> None:
        server = uvicorn_server(create_app(gateway), host="127.0.0.1", port=port, grace_s=1.0)
        serving = asyncio.create_task(server.serve())
        await until(lambda: bool(server.started))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for x in inputs:
                    answer = await client.post("/v1/models/toy:predict", json={"instances": x.tolist()})
                    assert answer.status_code == 200
                    assert answer.headers[ALIAS_HEADER] == "champion"
                    assert answer.headers["x-ensemble-manifest-version"] == "1"
                    np.testing.assert_allclose(answer.json()["predictions"], offline(CHAMPION, x), atol=1e-6)

                async def compared() -> int:
                    doc = (await client.get("/v1/ensembles/toy/comparison")).json()
                    return int(ComparisonSummary.model_validate(doc).compared)

                deadline = time.monotonic() + 20
                while await compared() < len(inputs):
                    assert time.monotonic() < deadline, "the shadow calls never filled the window"
                    await asyncio.sleep(0.05)
                missing = await client.get("/v1/ensembles/other/comparison")
                assert missing.status_code == 404
                assert "no traffic policy for ensemble 'other'" in missing.json()["error"]
                assert "\n" not in missing.json()["error"]
            evidence = await asyncio.to_thread(fetch_evidence, url, "toy")
            summary = evidence.summary
            assert (summary.champion.version, summary.challenger.version) == (1, 2)
            assert summary.challenger.errors == 0
            both = np.concatenate(inputs)
            agreement = np.mean(
                np.argmax(offline(CHAMPION, both), 1) == np.argmax(offline(CHALLENGER, both), 1)
            )
            assert summary.classification is not None
            assert summary.classification.agreement == pytest.approx(agreement, abs=1e-12)
            loose = OnlineThresholds(min_requests=30, min_agreement=0.0, max_p99_ratio=1000.0)
            passed = online_gate(summary, alias="champion", candidate=2, holder=1, thresholds=loose)
            assert passed.passed, passed.reason
            refused = online_gate(
                summary,
                alias="champion",
                candidate=2,
                holder=1,
                thresholds=OnlineThresholds(min_requests=1000),
            )
            assert not refused.passed
            assert "1000" in refused.reason
        finally:
            server.should_exit = True
            await serving
            await gateway.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_process(challenger)


def test_shadow_switched_on_by_a_config_edit_while_the_gateway_runs(
    champion_backend: str, tmp_path: Path
) -> None:
    """gRPC clients keep the champion's answers; the edit fills the comparison window."""
    challenger_port = free_port()
    challenger = start_fake_backend(challenger_port, members(CHALLENGER))
    config = tmp_path / "gateway.yaml"
    document = {
        "tracking_uri": "http://127.0.0.1:1",  # never asked: the manifests are handed in
        "ensemble": "toy",
        "aliases": ["champion", "challenger"],
        "member_backends": member_backends(champion_backend, f"127.0.0.1:{challenger_port}"),
        "poll_interval_s": 0.1,
        "traffic": {"toy": {"shadow_fraction": 0}},
    }
    config.write_text(yaml.safe_dump(document))
    gateway = registry_gateway(GatewaySettings.load(config))
    grpc_port = free_port()
    inputs = [rows(3, seed=300 + i) for i in range(20)]

    async def ask(channel: grpc.aio.Channel, x: np.ndarray) -> None:
        probabilities, trailing = await grpc_predict(channel, "toy", x)
        assert trailing[ALIAS_HEADER] == "champion"
        np.testing.assert_allclose(probabilities, offline(CHAMPION, x), atol=1e-6)

    async def scenario() -> None:
        server = create_grpc_server(gateway)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        gateway.start_background()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                for x in inputs[:10]:
                    await ask(channel, x)
                before = gateway.traffic.summary("toy")
                assert (before.champion.requests, before.paired, before.shadow.answered) == (10, 0, 0)

                document["traffic"] = {"toy": {"shadow_fraction": 1.0}}
                config.write_text(yaml.safe_dump(document))
                await until(lambda: gateway.traffic.policy("toy") == TrafficPolicy(shadow_fraction=1.0))
                for x in inputs[10:]:
                    await ask(channel, x)
                await until(lambda: gateway.traffic.summary("toy").compared == 10)
            after = gateway.traffic.summary("toy")
            # The pair did not change: the window kept the first ten, unpaired, and added ten pairs.
            assert (after.champion.requests, after.challenger.requests, after.paired) == (20, 10, 10)
            assert after.challenger.errors == 0
        finally:
            await server.stop(None)
            await gateway.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_process(challenger)
