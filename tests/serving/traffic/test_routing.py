"""Routing: sticky canary by a stable hash, random without a key, explicit addresses never rerouted."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from serving.traffic.policy import TrafficPolicy
from serving.traffic.routing import AS_ADDRESSED, Route, route, sticky_bucket
from tests.conftest import REPO_ROOT

SERVED = {"champion": 3, "challenger": 4}
KEYS = [f"user-{i}" for i in range(20_000)]


def decide(
    policy: TrafficPolicy | None,
    *,
    label: str | None = None,
    version: int | None = None,
    key: str | None = None,
    served: dict[str, int] | None = None,
    canary_draw: float = 0.5,
    shadow_draw: float = 0.5,
) -> Route:
    return route(
        policy,
        ensemble="digits",
        label=label,
        version=version,
        key=key,
        served=SERVED if served is None else served,
        canary_draw=canary_draw,
        shadow_draw=shadow_draw,
    )


def test_sticky_bucket_is_a_fixed_function_of_ensemble_and_key() -> None:
    # Pinned values: a change of the hash would move users between the sides on upgrade.
    assert sticky_bucket("digits", "alice") == 0.927766542041211
    assert sticky_bucket("digits", "bob") == 0.11835598304625908
    assert sticky_bucket("iris", "alice") != sticky_bucket("digits", "alice")
    assert all(0.0 <= sticky_bucket("digits", key) < 1.0 for key in KEYS[:1000])


def test_sticky_bucket_is_the_same_in_other_processes() -> None:
    """Python's hash() is salted per process; the bucket must not be."""
    here = [sticky_bucket("digits", key) for key in KEYS[:200]]
    code = (
        "import json, sys; from serving.traffic.routing import sticky_bucket; "
        "print(json.dumps([sticky_bucket('digits', f'user-{i}') for i in range(200)]))"
    )
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == here


@pytest.mark.parametrize("percent", [1.0, 20.0, 50.0, 95.0])
def test_about_p_percent_of_keys_land_on_the_challenger(percent: float) -> None:
    policy = TrafficPolicy(canary_percent=percent)
    on_challenger = sum(decide(policy, key=key).answer == "challenger" for key in KEYS)
    share = on_challenger / len(KEYS)
    # Binomial standard deviation at n=20000 is at most 0.35 points; allow five of them.
    assert abs(share - percent / 100) < 5 * (0.25 / len(KEYS)) ** 0.5


def test_each_key_always_lands_on_the_same_side_and_raising_p_only_adds_users() -> None:
    low, high = TrafficPolicy(canary_percent=10), TrafficPolicy(canary_percent=30)
    for key in KEYS[:2000]:
        first = decide(low, key=key, canary_draw=0.0)
        # The random draw is ignored when there is a key.
        assert decide(low, key=key, canary_draw=0.99).answer == first.answer
        assert first.how == "sticky"
        if first.answer == "challenger":
            assert decide(high, key=key).answer == "challenger"


def test_without_a_key_the_side_is_drawn_at_random() -> None:
    policy = TrafficPolicy(canary_percent=20)
    assert decide(policy, canary_draw=0.1999).answer == "challenger"
    assert decide(policy, canary_draw=0.2).answer == "champion"
    rng = random.Random(7)
    share = (
        sum(decide(policy, canary_draw=rng.random()).answer == "challenger" for _ in range(20_000)) / 20_000
    )
    assert abs(share - 0.2) < 0.02
    assert decide(policy, canary_draw=0.0).how == "random"


def test_route_names_labels_and_versions_of_both_sides() -> None:
    policy = TrafficPolicy(canary_percent=100, shadow_fraction=1.0)
    decided = decide(policy)
    assert decided == Route(
        answer="challenger",
        label="challenger",
        version=4,
        shadow="champion",
        shadow_label="champion",
        shadow_version=3,
        how="random",
    )
    plain = decide(TrafficPolicy(shadow_fraction=1.0))
    assert (plain.answer, plain.label, plain.version, plain.shadow_label) == (
        "champion",
        "champion",
        3,
        "challenger",
    )
    assert plain.how == "random"


def test_shadow_fraction_decides_the_background_call() -> None:
    policy = TrafficPolicy(shadow_fraction=0.25)
    assert decide(policy, shadow_draw=0.2499).shadow == "challenger"
    assert decide(policy, shadow_draw=0.25).shadow is None
    assert decide(TrafficPolicy(shadow_fraction=1.0), shadow_draw=0.9999).shadow == "challenger"
    assert decide(TrafficPolicy(shadow_fraction=0.0), shadow_draw=0.0).shadow is None


def test_explicit_label_or_version_is_never_rerouted() -> None:
    policy = TrafficPolicy(canary_percent=100, shadow_fraction=1.0)
    # A version: answered as addressed, not even shadowed.
    assert decide(policy, version=3) == AS_ADDRESSED
    assert decide(policy, version=4, key="alice") == AS_ADDRESSED
    # The pair's own labels: answered by that label, shadowed to the other side.
    champion = decide(policy, label="champion", key="alice")
    assert (champion.answer, champion.label, champion.how, champion.shadow) == (
        "champion",
        "champion",
        "explicit",
        "challenger",
    )
    challenger = decide(TrafficPolicy(canary_percent=0, shadow_fraction=1.0), label="challenger")
    assert (challenger.answer, challenger.shadow) == ("challenger", "champion")
    # Any other label: the policy stays out of it.
    assert decide(policy, label="staging", served={**SERVED, "staging": 9}) == AS_ADDRESSED


def test_no_policy_or_no_challenger_served() -> None:
    assert decide(None, key="alice") == AS_ADDRESSED
    policy = TrafficPolicy(canary_percent=100, shadow_fraction=1.0)
    alone = decide(policy, key="alice", served={"champion": 3})
    assert (alone.answer, alone.label, alone.shadow, alone.how) == ("champion", "champion", None, "off")
    # An explicit challenger label that is not served is left to the core's NotFound.
    assert decide(policy, label="challenger", served={"champion": 3}) == AS_ADDRESSED
    # Without the champion served, nothing is routed.
    assert decide(policy, served={"challenger": 4}) == AS_ADDRESSED
