"""The comparison window's figures, checked against the same figures computed offline with numpy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from contracts.comparison import ComparisonSummary, Latency
from contracts.manifest import OutputKind
from serving.traffic.comparison import ComparisonWindow, MemberObservation, SideObservation
from serving.traffic.figures import diff, figures, latency

KINDS: dict[str, OutputKind] = {"probabilities": "probabilities", "price": "predictions"}
N_CLASSES = 5
MEMBERS = ("m0", "m1", "m2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


@dataclass
class Request:
    """One request as both sides answered it, with everything the offline computation needs."""

    champion: SideObservation | None
    challenger: SideObservation | None


def member_answers(
    rng: np.random.Generator, i: int, side: str, base_p: np.ndarray, base_y: np.ndarray, version: int
) -> list[MemberObservation]:
    """Members near their side's answer; the challenger's m1 twice as far, its m2 failing on every 4th."""
    found = []
    for j, name in enumerate(MEMBERS):
        if side == "challenger" and name == "m2" and i % 4 == 0:
            found.append(MemberObservation(f"{side}-{name}", version, 0.5, error="DEADLINE_EXCEEDED"))
            continue
        noise = 0.3 * (j + 1) * (2.0 if side == "challenger" and name == "m1" else 1.0)
        outputs = {
            "probabilities": softmax(np.log(base_p) + rng.normal(scale=noise, size=base_p.shape)),
            "price": (base_y + rng.normal(scale=noise, size=base_y.shape)).astype(np.float32),
        }
        found.append(MemberObservation(f"{side}-{name}", version, float(rng.uniform(0.001, 0.02)), outputs))
    return found


def make_requests(n: int, seed: int = 0, error_every: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        rows = int(rng.integers(1, 9))
        logits = rng.normal(size=(rows, N_CLASSES))
        champion_p = softmax(logits)
        challenger_p = softmax(logits + rng.normal(scale=0.8, size=logits.shape))
        champion_y = rng.normal(loc=3.0, size=(rows, 1)).astype(np.float32)
        challenger_y = (champion_y + rng.normal(scale=0.2, size=champion_y.shape)).astype(np.float32)

        champion = SideObservation(
            version=3,
            latency_s=float(rng.uniform(0.005, 0.05)),
            outputs={"probabilities": champion_p, "price": champion_y},
            kinds=KINDS,
            members=member_answers(rng, i, "champion", champion_p, champion_y, 3),
        )
        failed = error_every and i % error_every == 1
        challenger = SideObservation(
            version=4,
            latency_s=float(rng.uniform(0.005, 0.08)),
            outputs=None if failed else {"probabilities": challenger_p, "price": challenger_y},
            kinds=KINDS,
            error="UNAVAILABLE" if failed else None,
            members=[] if failed else member_answers(rng, i, "challenger", challenger_p, challenger_y, 4),
        )
        requests.append(Request(champion, challenger))
    return requests


def output(observation: SideObservation | MemberObservation | None, name: str) -> Any:
    """An output of an observation that answered; None otherwise."""
    if observation is None or observation.outputs is None:
        return None
    return observation.outputs[name]


def offline(requests: list[Request]) -> dict[str, Any]:
    """The summary's figures, computed the plain way: concatenate every compared row, then numpy."""
    both = [
        r
        for r in requests
        if output(r.champion, "price") is not None and output(r.challenger, "price") is not None
    ]
    ref_p = np.concatenate([output(r.champion, "probabilities") for r in both])
    new_p = np.concatenate([output(r.challenger, "probabilities") for r in both])
    ref_y = np.concatenate([output(r.champion, "price") for r in both]).astype(np.float64)
    new_y = np.concatenate([output(r.challenger, "price") for r in both]).astype(np.float64)
    sides = {}
    for side in ("champion", "challenger"):
        observed = [getattr(r, side) for r in requests if getattr(r, side) is not None]
        answered = [o.latency_s for o in observed if o.error is None]
        sides[side] = {
            "requests": len(observed),
            "errors": len(observed) - len(answered),
            "p50": np.percentile(answered, 50),
            "p99": np.percentile(answered, 99),
        }
    # Members are compared with the champion's answer wherever there is one, paired or not.
    members: dict[str, dict[str, Any]] = {}
    for r in requests:
        if output(r.champion, "probabilities") is None:
            continue
        for side in ("champion", "challenger"):
            observation = getattr(r, side)
            for m in observation.members if observation is not None else []:
                entry = members.setdefault(
                    m.name, {"p": [], "ref": [], "lat": [], "errors": 0, "requests": 0}
                )
                entry["requests"] += 1
                if m.error is not None:
                    entry["errors"] += 1
                    continue
                entry["p"].append(output(m, "probabilities"))
                entry["ref"].append(output(r.champion, "probabilities"))
                entry["lat"].append(m.latency_s)
    return {
        "rows": len(ref_p),
        "agreement": float(np.mean(np.argmax(ref_p, axis=1) == np.argmax(new_p, axis=1))),
        "mad_p": float(np.mean(np.abs(new_p.astype(np.float64) - ref_p))),
        "mad_y": float(np.mean(np.abs(new_y - ref_y))),
        "rel_y": float(np.mean(np.abs(new_y - ref_y) / np.abs(ref_y))),
        "sides": sides,
        "members": {
            name: {
                "agreement": float(
                    np.mean(np.argmax(np.concatenate(e["p"]), 1) == np.argmax(np.concatenate(e["ref"]), 1))
                ),
                "mad": float(
                    np.mean(np.abs(np.concatenate(e["p"]).astype(np.float64) - np.concatenate(e["ref"])))
                ),
                "error_rate": e["errors"] / e["requests"],
                "p99": float(np.percentile(e["lat"], 99)),
            }
            for name, e in members.items()
        },
        "compared": len(both),
    }


def window(
    clock: Clock | None = None, max_requests: int = 10_000, max_age_s: float = 3600.0
) -> ComparisonWindow:
    return ComparisonWindow(
        "digits",
        "champion",
        "challenger",
        max_requests=max_requests,
        max_age_s=max_age_s,
        clock=clock or Clock(),
    )


def record_all(
    w: ComparisonWindow, requests: list[Request], clock: Clock | None = None, step_s: float = 0.0
) -> None:
    for r in requests:
        w.record(r.champion, r.challenger)
        if clock is not None:
            clock.now += step_s


def test_figures_equal_the_offline_computation() -> None:
    requests = make_requests(300, error_every=10)
    w = window()
    record_all(w, requests)
    summary = w.summary()
    expected = offline(requests)

    assert summary.window.requests == 300
    assert summary.paired == 300
    assert summary.compared == expected["compared"] == 270
    probabilities, price = summary.outputs["probabilities"], summary.outputs["price"]
    assert probabilities.kind == "probabilities"
    assert price.kind == "predictions"
    assert probabilities.rows == price.rows == expected["rows"]
    assert probabilities.agreement is not None
    assert probabilities.agreement == pytest.approx(expected["agreement"], rel=1e-12)
    assert 0.3 < probabilities.agreement < 0.95, "the fixture makes some argmax decisions differ"
    assert probabilities.mean_abs_diff == pytest.approx(expected["mad_p"], rel=1e-9)
    assert probabilities.mean_rel_diff is None
    assert price.agreement is None
    assert price.mean_abs_diff == pytest.approx(expected["mad_y"], rel=1e-9)
    assert price.mean_rel_diff == pytest.approx(expected["rel_y"], rel=1e-9)
    # Pooled by kind: one output of each kind here, so the pools equal the outputs.
    assert summary.classification is not None
    assert summary.regression is not None
    assert summary.classification.agreement == probabilities.agreement
    assert summary.regression.mean_rel_diff == price.mean_rel_diff

    for side in ("champion", "challenger"):
        got, want = getattr(summary, side), expected["sides"][side]
        assert (got.requests, got.errors) == (want["requests"], want["errors"])
        assert got.error_rate == pytest.approx(want["errors"] / want["requests"])
        assert got.latency_s.p50 == pytest.approx(want["p50"], rel=1e-12)
        assert got.latency_s.p99 == pytest.approx(want["p99"], rel=1e-12)
    assert summary.challenger.error_rate == pytest.approx(0.1)
    assert (summary.champion.alias, summary.champion.version) == ("champion", 3)
    assert (summary.challenger.alias, summary.challenger.version) == ("challenger", 4)


def test_per_member_figures_compare_with_the_champions_answer() -> None:
    requests = make_requests(200)
    w = window()
    record_all(w, requests)
    summary = w.summary()
    expected = offline(requests)["members"]
    assert [(m.side, m.member) for m in summary.members] == [
        ("champion", "champion-m0"),
        ("champion", "champion-m1"),
        ("champion", "champion-m2"),
        ("challenger", "challenger-m0"),
        ("challenger", "challenger-m1"),
        ("challenger", "challenger-m2"),
    ]
    for member in summary.members:
        want = expected[member.member]
        figures = member.outputs["probabilities"]
        assert figures.agreement == pytest.approx(want["agreement"], rel=1e-12)
        assert figures.mean_abs_diff == pytest.approx(want["mad"], rel=1e-9)
        assert member.error_rate == pytest.approx(want["error_rate"])
        assert member.latency_s.p99 == pytest.approx(want["p99"], rel=1e-12)
    by_name = {m.member: m for m in summary.members}
    # The regressed member (twice the noise) shows up against its neighbours.
    regressed = by_name["challenger-m1"].outputs["probabilities"].agreement
    neighbour = by_name["champion-m1"].outputs["probabilities"].agreement
    assert regressed is not None
    assert neighbour is not None
    assert regressed < neighbour
    assert by_name["challenger-m2"].error_rate == pytest.approx(0.25)


def test_window_keeps_the_last_n_requests() -> None:
    requests = make_requests(80, seed=1)
    w = window(max_requests=50)
    record_all(w, requests)
    summary = w.summary()
    assert summary.window.requests == 50
    assert summary.window.max_requests == 50
    expected = offline(requests[-50:])
    assert summary.outputs["probabilities"].agreement == pytest.approx(expected["agreement"], rel=1e-12)
    assert summary.outputs["price"].mean_rel_diff == pytest.approx(expected["rel_y"], rel=1e-9)


def test_window_drops_requests_older_than_its_age() -> None:
    clock = Clock()
    requests = make_requests(60, seed=2)
    w = window(clock, max_age_s=30.0)
    record_all(w, requests, clock, step_s=1.0)  # one request a second, the last at t+59
    summary = w.summary()  # at t+60: requests at t+30 .. t+59 are within 30 s
    assert summary.window.requests == 30
    assert summary.window.oldest_age_s == pytest.approx(30.0)
    expected = offline(requests[30:])
    assert summary.outputs["probabilities"].agreement == pytest.approx(expected["agreement"], rel=1e-12)
    clock.now += 100
    empty = w.summary()
    assert empty.window.requests == 0
    assert empty.paired == 0
    assert empty.classification is None
    assert empty.outputs == {}
    assert empty.challenger.latency_s.p99 is None
    assert empty.challenger.error_rate is None


def test_one_sided_requests_count_for_their_side_only() -> None:
    requests = make_requests(20, seed=3)
    w = window()
    for r in requests[:10]:
        w.record(None, r.challenger)  # canaried, not shadowed
    for r in requests[10:]:
        w.record(r.champion, None)  # plain, not shadowed
    summary = w.summary()
    assert summary.paired == summary.compared == 0
    assert summary.challenger.requests == 10
    assert summary.champion.requests == 10
    assert summary.classification is None
    assert summary.challenger.latency_s.p50 == pytest.approx(
        np.percentile([r.challenger.latency_s for r in requests[:10]], 50)  # type: ignore[union-attr]
    )


def test_a_failed_champion_leaves_nothing_to_compare_against() -> None:
    request = make_requests(1, seed=4)[0]
    w = window()
    w.record(SideObservation(version=3, latency_s=2.0, kinds=KINDS, error="UNAVAILABLE"), request.challenger)
    summary = w.summary()
    assert summary.paired == 1
    assert summary.compared == 0
    assert summary.champion.errors == 1
    assert summary.champion.latency_s.p50 is None
    assert summary.outputs == {}
    assert all(m.outputs == {} for m in summary.members)


def test_a_new_version_on_either_side_starts_the_window_again() -> None:
    requests = make_requests(10, seed=5)
    w = window()
    record_all(w, requests)
    assert w.summary().window.requests == 10
    moved = make_requests(3, seed=6)
    for r in moved:
        assert r.challenger is not None
        w.record(r.champion, SideObservation(5, r.challenger.latency_s, r.challenger.outputs, KINDS))
    summary = w.summary()
    assert summary.window.requests == 3
    assert summary.challenger.version == 5


def test_resize_keeps_what_fits() -> None:
    w = window()
    record_all(w, make_requests(40, seed=7))
    w.resize(max_requests=25, max_age_s=60.0)
    assert w.summary().window.requests == 25


def test_diff_edge_cases() -> None:
    # One probability per row: the decision is the 0.5 threshold.
    ref = np.array([[0.2], [0.7], [0.5]])
    new = np.array([[0.6], [0.9], [0.49]])
    single = diff("probabilities", ref, new)
    assert single is not None
    assert (single.decisions, single.agreeing) == (3, 1)
    # Shapes that differ are not comparable.
    assert diff("probabilities", np.zeros((2, 3)), np.zeros((2, 4))) is None
    # A zero prediction divides by the floor, not by zero.
    zero = diff("predictions", np.array([0.0, 2.0]), np.array([0.0, 3.0]))
    assert zero is not None
    assert zero.rel_sum == pytest.approx(0.5)


def test_multilabel_outputs_agree_label_by_label_at_the_threshold() -> None:
    """Two rows of three labels: a [batch, labels] output is not an argmax, every label decides."""
    ref = np.array([[0.9, 0.2, 0.6], [0.1, 0.8, 0.4]])
    new = np.array([[0.7, 0.6, 0.6], [0.2, 0.9, 0.3]])
    labels = diff("multilabel", ref, new)
    assert labels is not None
    assert (labels.decisions, labels.agreeing) == (6, 5)  # only row 0, label 1 flips (0.2 -> 0.6)
    assert labels.abs_sum == pytest.approx(0.2 + 0.4 + 0.0 + 0.1 + 0.1 + 0.1)
    assert figures(labels, "multilabel").agreement == pytest.approx(5 / 6)
    assert figures(labels, "multilabel").mean_rel_diff is None


def test_summary_json_is_the_documented_schema() -> None:
    w = window()
    record_all(w, make_requests(5, seed=8))
    data = json.loads(w.summary().model_dump_json())
    assert set(data) == {
        "schema_version", "ensemble", "champion", "challenger", "window", "paired", "compared",
        "classification", "regression", "outputs", "members", "shadow",
    }  # fmt: skip
    assert data["schema_version"] == 1
    assert set(data["champion"]) == {"alias", "version", "requests", "errors", "error_rate", "latency_s"}
    assert set(data["champion"]["latency_s"]) == {"p50", "p99"}
    assert set(data["window"]) == {"max_requests", "max_age_s", "requests", "oldest_age_s"}
    assert set(data["classification"]) == {"rows", "agreement", "mean_abs_diff", "mean_rel_diff"}
    assert set(data["outputs"]["price"]) == {"kind", "rows", "agreement", "mean_abs_diff", "mean_rel_diff"}
    assert set(data["members"][0]) == {
        "side", "member", "version", "requests", "errors", "error_rate", "latency_s", "outputs",
    }  # fmt: skip
    assert data["shadow"] == {"answered": 0, "failed": 0, "dropped": 0}
    assert ComparisonSummary.model_validate(data) == w.summary()


def test_running_sums_stay_exact_through_many_evictions() -> None:
    """The window adds each request's sums once and takes them away again on eviction."""
    clock = Clock()
    requests = make_requests(1500, seed=9, error_every=7)
    w = window(clock, max_requests=120, max_age_s=100.0)
    for i, r in enumerate(requests):
        w.record(r.champion, r.challenger)
        clock.now += 1.0 if i % 3 else 0.0  # two requests a second on average: age drops some too
    summary = w.summary()
    kept = summary.window.requests
    assert 0 < kept <= 120
    expected = offline(requests[-kept:])
    assert summary.compared == expected["compared"]
    assert summary.outputs["probabilities"].agreement == pytest.approx(expected["agreement"], rel=1e-12)
    assert summary.outputs["probabilities"].mean_abs_diff == pytest.approx(expected["mad_p"], rel=1e-9)
    assert summary.outputs["price"].mean_rel_diff == pytest.approx(expected["rel_y"], rel=1e-9)
    assert summary.challenger.latency_s.p99 == pytest.approx(
        expected["sides"]["challenger"]["p99"], rel=1e-12
    )
    for member in summary.members:
        want = expected["members"][member.member]
        assert member.outputs["probabilities"].agreement == pytest.approx(want["agreement"], rel=1e-12)
        assert member.latency_s.p99 == pytest.approx(want["p99"], rel=1e-12)


def test_a_member_leaves_the_summary_when_its_calls_age_out() -> None:
    clock = Clock()
    w = window(clock, max_age_s=10.0)
    first, later = make_requests(2, seed=10)
    w.record(first.champion, first.challenger)
    clock.now += 5
    assert later.champion is not None
    w.record(SideObservation(3, 0.01, later.champion.outputs, KINDS), None)  # no members this time
    assert len(w.summary().members) == 6
    clock.now += 6  # the first request is now 11 s old
    summary = w.summary()
    assert summary.members == []
    assert summary.window.requests == 1
    assert summary.compared == 0
    assert summary.outputs == {}


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_latency_percentiles_equal_numpys(n: int) -> None:
    values = list(np.random.default_rng(n).exponential(0.01, size=n))
    got = latency(values)
    assert got.p50 == pytest.approx(np.percentile(values, 50), rel=1e-12)
    assert got.p99 == pytest.approx(np.percentile(values, 99), rel=1e-12)
    assert latency([]) == Latency()
