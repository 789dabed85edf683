"""The controller the core calls: routing, shadow calls recorded as pairs, hot-swapped policies, metrics."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts.manifest import OutputKind
from serving.errors import NotFound
from serving.traffic.comparison import SideObservation
from serving.traffic.controller import TrafficController
from serving.traffic.policy import TrafficPolicy
from serving.traffic.routing import Route
from tests.serving.traffic.helpers import settle

SERVED = {"champion": 3, "challenger": 4}
KINDS: dict[str, OutputKind] = {"probabilities": "probabilities"}


def answer(version: int, probabilities: np.ndarray, latency_s: float = 0.01) -> SideObservation:
    return SideObservation(version, latency_s, {"probabilities": probabilities}, KINDS)


def rows(seed: int, n: int = 4) -> np.ndarray:
    p = np.random.default_rng(seed).dirichlet(np.ones(3), size=n)
    return np.asarray(p, dtype=np.float32)


def controller(policy: TrafficPolicy, registry: CollectorRegistry | None = None) -> TrafficController:
    return TrafficController({"digits": policy}, registry, rng=random.Random(0))


def decide(c: TrafficController, key: str | None = None, label: str | None = None) -> Route:
    headers = {"x-user-id": key} if key else {}
    return c.route("digits", label=label, version=None, headers=headers, served=SERVED)


def shadow_of(version: int, probabilities: np.ndarray) -> Callable[[], Awaitable[SideObservation]]:
    async def call() -> SideObservation:
        return answer(version, probabilities, 0.02)

    return call


@pytest.mark.asyncio
async def test_shadowed_requests_become_pairs_with_the_sides_in_place() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=64))
    champion_rows, challenger_rows = rows(1), rows(2)
    for _ in range(10):
        decided = decide(c)
        assert (decided.answer, decided.shadow) == ("champion", "challenger")
        c.answered("digits", decided, answer(3, champion_rows), shadow_of(4, challenger_rows))
    await settle()
    summary = c.summary("digits")
    assert (summary.paired, summary.compared) == (10, 10)
    expected = np.mean(np.argmax(champion_rows, 1) == np.argmax(challenger_rows, 1))
    assert summary.classification is not None
    assert summary.classification.agreement == pytest.approx(expected)
    assert (summary.champion.version, summary.challenger.version) == (3, 4)
    assert summary.shadow.answered == 10


@pytest.mark.asyncio
async def test_a_canaried_request_is_shadowed_by_the_champion() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0, canary_percent=100))
    decided = decide(c, key="alice")
    assert (decided.answer, decided.label, decided.shadow_label) == ("challenger", "challenger", "champion")
    c.answered("digits", decided, answer(4, rows(2), 0.05), shadow_of(3, rows(1)))
    await settle()
    summary = c.summary("digits")
    assert summary.champion.latency_s.p50 == pytest.approx(0.02), "the shadow answered for the champion"
    assert summary.challenger.latency_s.p50 == pytest.approx(0.05)


@pytest.mark.asyncio
async def test_a_failing_shadow_counts_as_a_challenger_error_only() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0))

    async def broken() -> SideObservation:
        raise ConnectionError("challenger down")

    for _ in range(4):
        c.answered("digits", decide(c), answer(3, rows(1)), broken)
    await settle()
    summary = c.summary("digits")
    assert (summary.champion.errors, summary.challenger.errors, summary.challenger.requests) == (0, 4, 4)
    assert summary.challenger.version == 4, "the failed side is recorded under the version it was routed to"
    assert summary.compared == 0
    assert summary.shadow.failed == 4


@pytest.mark.asyncio
async def test_over_the_shadow_limit_the_request_still_counts_for_its_side() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=2))
    release = asyncio.Event()

    async def slow() -> SideObservation:
        await release.wait()
        return answer(4, rows(2))

    for _ in range(5):
        c.answered("digits", decide(c), answer(3, rows(1)), slow)
    summary = c.summary("digits")
    assert summary.shadow.dropped == 3
    assert summary.champion.requests == 3, "dropped shadows leave one-sided champion requests"
    release.set()
    await settle()
    summary = c.summary("digits")
    assert (summary.champion.requests, summary.paired, summary.shadow.answered) == (5, 2, 2)


@pytest.mark.asyncio
async def test_requests_outside_the_policy_are_not_recorded() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0))
    explicit = c.route("digits", label=None, version=3, headers=None, served=SERVED)
    c.answered("digits", explicit, answer(3, rows(1)), shadow_of(4, rows(2)))
    other = c.route("iris", label=None, version=None, headers=None, served=SERVED)
    assert other.answer is None
    c.answered("iris", other, answer(3, rows(1)))
    await settle()
    assert c.summary("digits").window.requests == 0
    with pytest.raises(NotFound, match="no traffic policy for ensemble 'iris'") as info:
        c.summary("iris")
    assert info.value.http_status == 404


@pytest.mark.asyncio
async def test_update_keeps_the_window_of_an_unchanged_pair() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0))
    c.answered("digits", decide(c), answer(3, rows(1)), shadow_of(4, rows(2)))
    await settle()
    c.update({"digits": TrafficPolicy(shadow_fraction=0.5, shadow_concurrency=1, window_requests=10)})
    summary = c.summary("digits")
    assert summary.window.requests == 1
    assert summary.window.max_requests == 10
    policy = c.policy("digits")
    assert policy is not None
    assert policy.shadow_fraction == 0.5
    routed_before = Route(answer="challenger", label="challenger", version=4, how="random")
    c.update({"digits": TrafficPolicy(challenger="canary_v2")})
    assert c.summary("digits").window.requests == 0, "another pair starts another window"
    assert c.summary("digits").challenger.alias == "canary_v2"
    c.answered("digits", routed_before, answer(4, rows(2)), shadow_of(3, rows(1)))
    await settle()
    assert c.summary("digits").window.requests == 0, "an answer routed under the old pair is not this pair's"
    c.update({})
    with pytest.raises(NotFound):
        c.summary("digits")
    await c.close()


@pytest.mark.asyncio
async def test_close_cancels_shadows_in_flight() -> None:
    c = controller(TrafficPolicy(shadow_fraction=1.0))

    async def hang() -> SideObservation:
        await asyncio.Event().wait()
        raise AssertionError("never")

    c.answered("digits", decide(c), answer(3, rows(1)), hang)
    await settle()
    await c.close()
    assert c.summary("digits").shadow.answered == 0


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.asyncio
async def test_metrics_carry_the_window_figures_and_the_counts() -> None:
    registry = CollectorRegistry()
    c = controller(TrafficPolicy(shadow_fraction=1.0, canary_percent=30, shadow_concurrency=64), registry)
    for i in range(40):
        decided = decide(c, key=f"user-{i}")
        champion, challenger = answer(3, rows(i), 0.01 + i / 1000), answer(4, rows(i + 100), 0.02)
        primary, other = (champion, challenger) if decided.answer == "champion" else (challenger, champion)
        c.answered("digits", decided, primary, shadow_of(other.version, other.outputs["probabilities"]))  # type: ignore[index]
    await settle()
    summary = c.summary("digits")
    samples = scrape(registry)
    pair = (("challenger", "challenger"), ("champion", "champion"), ("ensemble", "digits"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted((*pair, *labels.items()))))]

    probabilities = summary.outputs["probabilities"]
    assert value("ensemble_comparison_agreement_ratio", output="probabilities") == pytest.approx(
        probabilities.agreement
    )
    assert value("ensemble_comparison_mean_abs_diff", output="probabilities") == pytest.approx(
        probabilities.mean_abs_diff
    )
    assert value("ensemble_comparison_window_requests") == 40
    assert value("ensemble_comparison_window_paired") == 40
    assert value("ensemble_comparison_latency_seconds", side="champion", quantile="0.99") == pytest.approx(
        summary.champion.latency_s.p99
    )
    assert value("ensemble_comparison_error_ratio", side="challenger") == 0
    decisions = value("ensemble_comparison_decisions_total", output="probabilities")
    agreeing = value("ensemble_comparison_agreeing_decisions_total", output="probabilities")
    assert decisions == probabilities.rows == 160
    assert agreeing / decisions == pytest.approx(probabilities.agreement)
    on_challenger = value("ensemble_traffic_requests_total", alias="challenger")
    assert on_challenger + value("ensemble_traffic_requests_total", alias="champion") == 40
    assert on_challenger == sum(decide(c, key=f"user-{i}").answer == "challenger" for i in range(40)), (
        "the counter follows the sticky decisions"
    )
    assert value("ensemble_shadow_requests_total", outcome="answered") == 40
    assert not any(name.startswith("ensemble_comparison_member") for name, _ in samples), (
        "no member data given"
    )
