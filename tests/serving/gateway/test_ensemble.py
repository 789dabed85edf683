"""The ensemble core in-process: validation, fan-out, quorum, deadlines, extensions, batching."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from contracts import combine
from contracts.manifest import MemberRef, TensorSpec
from serving.batching import BatchingPolicy
from serving.core import ModelMetadata, ModelRef, PredictResult
from serving.detail import DETAIL_HEADER
from serving.ensemble import MEMBERS_HEADER, VERSION_HEADER, EnsembleCore
from serving.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.fanout import FanOutPolicy
from serving.manifest_source import ServedManifests
from serving.members import MemberError, PreparedCall
from serving.metrics import GatewayMetrics
from serving.resolution import NO_MANIFEST
from serving.testing import make_manifest, member_answer


class FakeCaller:
    """Members answered in-process, with per-member delay or failure."""

    def __init__(self) -> None:
        self.delay_s: dict[str, float] = {}
        self.fail: dict[str, str] = {}
        self.calls: list[tuple[str, int]] = []
        self.cancelled: list[str] = []

    def prepare(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: tuple[str, ...]
    ) -> PreparedCall:
        return PreparedCall(signature_name, inputs, output_filter)

    async def send(self, member: MemberRef, call: PreparedCall, timeout_s: float) -> dict[str, np.ndarray]:
        inputs = call.inputs
        self.calls.append((member.name, int(inputs["x"].shape[0])))
        delay = self.delay_s.get(member.name, 0.0)
        try:
            if delay > timeout_s:
                await asyncio.sleep(timeout_s)
                raise MemberError("deadline", "fake backend too slow")
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(member.name)
            raise
        if member.name in self.fail:
            raise MemberError("unavailable", self.fail[member.name])
        return {"probabilities": member_answer(member.name, inputs["x"])}

    async def metadata(self, member: MemberRef, timeout_s: float) -> ModelMetadata:
        raise MemberError("unimplemented", "fake")

    async def available(self, member: MemberRef, timeout_s: float) -> bool:
        return member.name not in self.fail


def offline(manifest, x: np.ndarray, members: Sequence[int] | None = None) -> np.ndarray:
    chosen = list(range(len(manifest.members))) if members is None else list(members)
    answers = [{"probabilities": member_answer(manifest.members[i].name, x)} for i in chosen]
    weights = combine.method_weights(manifest.combiner.method, manifest.weights)
    answered = [i in chosen for i in range(len(manifest.members))]
    used = combine.renormalized(weights, answered)[np.asarray(answered)]
    return combine.combine_outputs(answers, used)["probabilities"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def make_core(manifest=None, caller=None, **kwargs) -> tuple[EnsembleCore, FakeCaller, GatewayMetrics]:
    manifest = manifest or make_manifest()
    caller = caller or FakeCaller()
    metrics = GatewayMetrics()
    policy = kwargs.pop("policy", FanOutPolicy(member_deadline_s=1.0, request_deadline_s=2.0))
    core = EnsembleCore(ServedManifests(default=manifest), caller, policy=policy, metrics=metrics, **kwargs)
    return core, caller, metrics


def test_answer_equals_offline_weighted_mean() -> None:
    core, caller, _ = make_core()
    x = rows(5)
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": x}))
    np.testing.assert_allclose(result.outputs["probabilities"], offline(core.served.default, x), atol=1e-6)
    assert result.outputs["probabilities"].dtype == np.float32
    assert result.headers == {VERSION_HEADER: "1", MEMBERS_HEADER: "3/3"}
    assert sorted(name for name, _ in caller.calls) == ["toy-m0", "toy-m1", "toy-m2"]


def test_failed_member_is_left_out_and_weights_renormalised() -> None:
    core, caller, metrics = make_core()
    caller.fail["toy-m1"] = "connection refused"
    x = rows(3)
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": x}))
    np.testing.assert_allclose(
        result.outputs["probabilities"], offline(core.served.default, x, members=[0, 2]), atol=1e-6
    )
    assert result.headers[MEMBERS_HEADER] == "2/3"
    assert metrics.registry.get_sample_value("ensemble_degraded_responses_total") == 1.0
    assert (
        metrics.registry.get_sample_value(
            "ensemble_member_failures_total", {"member": "toy-m1", "version": "1", "reason": "unavailable"}
        )
        == 1.0
    )


def test_below_quorum_is_unavailable_naming_members_and_reasons() -> None:
    core, caller, _ = make_core()
    caller.fail["toy-m0"] = "connection refused"
    caller.fail["toy-m2"] = "socket closed"
    with pytest.raises(Unavailable) as info:
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    message = str(info.value)
    assert "1/3 members answered" in message
    assert "toy-m0: unavailable (connection refused)" in message
    assert "toy-m2: unavailable (socket closed)" in message


def test_min_weight_quorum() -> None:
    core, caller, _ = make_core(make_manifest(min_members=1, min_weight=0.6))
    caller.fail["toy-m0"] = "down"  # the 0.5 member: 0.5 of the weight is left
    with pytest.raises(Unavailable):
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    caller.fail = {"toy-m2": "down"}  # 0.8 left
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    assert result.headers[MEMBERS_HEADER] == "2/3"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input(s) x"),
        ({"x": rows(2), "z": rows(2)}, "unknown input(s) z"),
        ({"x": rows(2).astype(np.float64)}, "must be float32, got float64"),
        ({"x": np.zeros((2, 5), np.float32)}, "must have shape [batch, 4], got [2, 5]"),
        ({"x": np.zeros((2,), np.float32)}, "must have shape [batch, 4], got [2]"),
    ],
)
def test_bad_inputs_are_rejected_before_fan_out(inputs, message) -> None:
    core, caller, _ = make_core()
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(core.predict(ModelRef("toy"), inputs))
    assert message in str(info.value)
    assert caller.calls == []


def test_unknown_output_filter_and_signature_are_invalid() -> None:
    core, _, _ = make_core()
    with pytest.raises(InvalidArgument, match="output tensor alias not found in signature: nope"):
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}, output_filter=["nope"]))
    with pytest.raises(InvalidArgument, match="duplicate output tensor alias: probabilities"):
        asyncio.run(
            core.predict(ModelRef("toy"), {"x": rows(1)}, output_filter=["probabilities", "probabilities"])
        )
    with pytest.raises(InvalidArgument, match="other"):
        asyncio.run(core.predict(ModelRef("toy", signature_name="other"), {"x": rows(1)}))


@pytest.mark.parametrize(
    "ref", [ModelRef("other"), ModelRef("toy", version=7), ModelRef("toy", label="champion")]
)
def test_unknown_model_version_or_label_is_not_found(ref: ModelRef) -> None:
    core, _, _ = make_core()
    with pytest.raises(NotFound):
        asyncio.run(core.predict(ref, {"x": rows(1)}))
    with pytest.raises(NotFound):
        asyncio.run(core.status(ref))


def test_labels_and_versions_address_their_manifests() -> None:
    champion, challenger = make_manifest(version=3), make_manifest((0.2, 0.3, 0.5), version=4)
    served = ServedManifests(default=champion, labels={"champion": champion, "challenger": challenger})
    core = EnsembleCore(served, FakeCaller())
    x = rows(2)
    by_label = asyncio.run(core.predict(ModelRef("toy", label="challenger"), {"x": x}))
    by_version = asyncio.run(core.predict(ModelRef("toy", version=4), {"x": x}))
    default = asyncio.run(core.predict(ModelRef("toy"), {"x": x}))
    assert by_label.version == by_version.version == 4
    assert default.version == 3
    np.testing.assert_allclose(by_label.outputs["probabilities"], offline(challenger, x), atol=1e-6)
    np.testing.assert_array_equal(by_label.outputs["probabilities"], by_version.outputs["probabilities"])
    assert [s.version for s in asyncio.run(core.status(ModelRef("toy")))] == [4, 3]
    assert [s.state for s in asyncio.run(core.status(ModelRef("toy", label="champion")))] == ["AVAILABLE"]


def test_straggler_is_cut_off_by_member_deadline() -> None:
    core, caller, _ = make_core(policy=FanOutPolicy(member_deadline_s=0.2, request_deadline_s=5.0))
    caller.delay_s["toy-m2"] = 30.0
    x = rows(2)
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": x}))
    assert result.headers[MEMBERS_HEADER] == "2/3"
    np.testing.assert_allclose(
        result.outputs["probabilities"], offline(core.served.default, x, members=[0, 1]), atol=1e-6
    )


def test_client_deadline_cuts_stragglers_and_is_deadline_exceeded_below_quorum() -> None:
    core, caller, _ = make_core(policy=FanOutPolicy(member_deadline_s=30.0, request_deadline_s=30.0))
    for member in ("toy-m0", "toy-m1", "toy-m2"):
        caller.delay_s[member] = 20.0
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}, timeout_s=0.2))
    assert sorted(caller.cancelled) == ["toy-m0", "toy-m1", "toy-m2"]


def test_answer_decided_early_cancels_stragglers() -> None:
    core, caller, _ = make_core(policy=FanOutPolicy(member_deadline_s=30.0, request_deadline_s=30.0))
    caller.fail["toy-m0"] = "down"
    caller.fail["toy-m1"] = "down"
    caller.delay_s["toy-m2"] = 20.0
    with pytest.raises(Unavailable):
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    assert caller.cancelled == ["toy-m2"]


def test_detail_header_adds_spread_and_member_outputs() -> None:
    core, _, _ = make_core()
    x = rows(4)
    plain = asyncio.run(core.predict(ModelRef("toy"), {"x": x}))
    assert set(plain.outputs) == {"probabilities"}
    detailed = asyncio.run(
        core.predict(ModelRef("toy"), {"x": x}, request_headers={DETAIL_HEADER: "members"})
    )
    stack = np.stack([member_answer(m.name, x) for m in core.served.default.members])
    expected_spread = combine.weighted_spread(stack, core.served.default.weights)
    np.testing.assert_allclose(detailed.outputs["probabilities:spread"], expected_spread, atol=1e-6)
    for member in core.served.default.members:
        np.testing.assert_array_equal(
            detailed.outputs[f"probabilities:{member.name}"], member_answer(member.name, x)
        )
    spread_only = asyncio.run(
        core.predict(ModelRef("toy"), {"x": x}, request_headers={DETAIL_HEADER: "spread"})
    )
    assert set(spread_only.outputs) == {"probabilities", "probabilities:spread"}


def test_micro_batching_coalesces_and_splits_answers_back() -> None:
    core, caller, _ = make_core(batching=BatchingPolicy(64, 0.05))
    inputs = [rows(n, seed=n) for n in (1, 2, 3, 1, 5, 2, 1, 4)]

    async def run_all() -> list[PredictResult]:
        return await asyncio.gather(*(core.predict(ModelRef("toy"), {"x": x}) for x in inputs))

    results = asyncio.run(run_all())
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(
            result.outputs["probabilities"], offline(core.served.default, x), atol=1e-6
        )
    # one backend call per member for the whole burst
    assert sorted(caller.calls) == [("toy-m0", 19), ("toy-m1", 19), ("toy-m2", 19)]


def test_swap_lets_in_flight_requests_finish_on_the_old_manifest() -> None:
    old, new = make_manifest(version=1), make_manifest((0.1, 0.1, 0.8), version=2)
    caller = FakeCaller()
    caller.delay_s = {m.name: 0.2 for m in old.members}
    core = EnsembleCore(ServedManifests(default=old), caller)
    x = rows(2)

    async def scenario() -> tuple[PredictResult, PredictResult]:
        in_flight = asyncio.create_task(core.predict(ModelRef("toy"), {"x": x}))
        await asyncio.sleep(0.05)
        core.swap(ServedManifests(default=new))
        caller.delay_s = {}
        after = await core.predict(ModelRef("toy"), {"x": x})
        return await in_flight, after

    before, after = asyncio.run(scenario())
    assert (before.version, after.version) == (1, 2)
    np.testing.assert_allclose(before.outputs["probabilities"], offline(old, x), atol=1e-6)
    np.testing.assert_allclose(after.outputs["probabilities"], offline(new, x), atol=1e-6)


def test_ready_needs_quorum_available() -> None:
    core, caller, _ = make_core()
    assert asyncio.run(core.ready())[0]
    caller.fail = {"toy-m0": "x", "toy-m1": "y"}
    ready, why = asyncio.run(core.ready())
    assert not ready
    assert "toy-m0" in why
    assert "toy-m1" in why


def test_quorum_problems_judge_a_candidate_manifest_before_it_is_served() -> None:
    core, caller, _ = make_core()
    candidate = make_manifest(name="cand", version=2)
    caller.fail = {"cand-m0": "not loaded", "cand-m1": "not loaded"}
    (problem,) = asyncio.run(core.quorum_problems([candidate]))
    assert problem is not None
    assert "cand v2: quorum not available" in problem
    assert "cand-m0" in problem
    assert asyncio.run(core.quorum_problems([core.served.default])) == [None]
    assert asyncio.run(core.ready())[0]  # what is served now is unaffected


async def staggered(core: EnsembleCore, gap_s: float) -> list[PredictResult]:
    """Requests of 1, 2, 3 and 4 rows (seeded by their size), ``gap_s`` apart, all awaited."""
    tasks: list[asyncio.Task[PredictResult]] = []
    for n in (1, 2, 3, 4):
        if tasks:
            await asyncio.sleep(gap_s)
        tasks.append(asyncio.create_task(core.predict(ModelRef("toy"), {"x": rows(n, seed=n)})))
    return await asyncio.gather(*tasks)


def test_micro_batching_adapts_to_load() -> None:
    # A long max delay: only the in-flight batch coming back can release the next one early.
    core, caller, _ = make_core(batching=BatchingPolicy(64, 5.0))
    caller.delay_s = {m.name: 0.2 for m in core.served.default.members}

    started = asyncio.run(staggered(core, gap_s=0.02))
    assert [r.headers[MEMBERS_HEADER] for r in started] == ["3/3"] * 4
    rows_per_call = [n for name, n in caller.calls if name == "toy-m0"]
    assert rows_per_call == [1, 9]  # the idle gateway sent the first at once; the rest gathered


def test_micro_batching_in_flight_cap_holds_batches_back_past_the_delay() -> None:
    # One batch out at a time: while it is out, later requests gather past the 10 ms delay, so a
    # backend that executes one call at a time gets one large call instead of a queue of small ones.
    core, caller, _ = make_core(batching=BatchingPolicy(64, 0.01, max_in_flight=1))
    caller.delay_s = {m.name: 0.2 for m in core.served.default.members}

    results = asyncio.run(staggered(core, gap_s=0.03))
    for n, result in zip((1, 2, 3, 4), results, strict=True):
        x = rows(n, seed=n)
        np.testing.assert_allclose(
            result.outputs["probabilities"], offline(core.served.default, x), atol=1e-6
        )
    assert [n for name, n in caller.calls if name == "toy-m0"] == [1, 9]


def test_micro_batching_without_cap_releases_batches_at_the_delay() -> None:
    # The same arrivals with no cap: each gathered batch goes out when its 10 ms delay passes.
    core, caller, _ = make_core(batching=BatchingPolicy(64, 0.01))
    caller.delay_s = {m.name: 0.2 for m in core.served.default.members}

    asyncio.run(staggered(core, gap_s=0.03))
    assert [n for name, n in caller.calls if name == "toy-m0"] == [1, 2, 3, 4]


def test_micro_batching_full_batch_goes_out_despite_the_cap() -> None:
    core, caller, _ = make_core(batching=BatchingPolicy(4, 0.01, max_in_flight=1))
    caller.delay_s = {m.name: 0.1 for m in core.served.default.members}

    async def scenario() -> None:
        first = asyncio.create_task(core.predict(ModelRef("toy"), {"x": rows(1)}))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, *(core.predict(ModelRef("toy"), {"x": rows(2, seed=s)}) for s in (5, 6)))

    asyncio.run(scenario())
    # The two 2-row requests fill a 4-row batch, which goes out while the first is still out.
    assert [n for name, n in caller.calls if name == "toy-m0"] == [1, 4]


def _single_value_manifest(shape: list[int]):
    manifest = make_manifest()
    return manifest.model_copy(
        update={
            "inputs": [
                *manifest.inputs,
                TensorSpec(name="radius", dtype="float32", shape=shape),
                TensorSpec(name="color", dtype="string", shape=shape),
            ]
        }
    )


@pytest.mark.parametrize("declared", [[-1], [-1, 1]], ids=["exported [-1]", "exported earlier [-1, 1]"])
@pytest.mark.parametrize("sent", ["scalar per record", "one-element list per record"])
def test_one_value_inputs_are_taken_in_both_record_forms(declared: list[int], sent: str) -> None:
    """Members receive the shape their signature declares, whichever form the client wrote."""
    received: list[dict[str, tuple[int, ...]]] = []

    class Recording(FakeCaller):
        async def send(self, member, call, timeout_s):
            received.append({name: array.shape for name, array in call.inputs.items()})
            return await super().send(member, call, timeout_s)

    core, _, _ = make_core(_single_value_manifest(declared), Recording())
    radius = np.array([17.99, 20.57], np.float32)
    color = np.array([b"red", b"blue"], dtype=object)
    if sent != "scalar per record":
        radius, color = radius.reshape(2, 1), color.reshape(2, 1)
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": rows(2), "radius": radius, "color": color}))
    assert result.outputs["probabilities"].shape == (2, 3)
    want = {"x": (2, 4), "radius": (2, *declared[1:]), "color": (2, *declared[1:])}
    assert received == [want] * 3


def test_other_shapes_of_a_one_value_input_are_refused() -> None:
    core, caller, _ = make_core(_single_value_manifest([-1]))
    bad = {"x": rows(2), "color": np.array([[b"a"], [b"b"]], dtype=object)}
    for radius in (np.zeros((2, 2), np.float32), np.zeros((2, 1, 1), np.float32), np.float32(1.0)):
        with pytest.raises(InvalidArgument, match="input 'radius' must have shape \\[batch\\]"):
            asyncio.run(core.predict(ModelRef("toy"), {**bad, "radius": np.asarray(radius)}))
    assert caller.calls == []


def test_calls_cancelled_once_the_quorum_is_lost_are_not_needed_not_failures() -> None:
    core, caller, metrics = make_core(policy=FanOutPolicy(member_deadline_s=30.0, request_deadline_s=30.0))
    caller.fail = {"toy-m0": "down", "toy-m1": "down"}
    caller.delay_s["toy-m2"] = 20.0  # healthy, but the answer is decided before it is back
    with pytest.raises(Unavailable) as info:
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    assert "toy-m2: not_needed (cancelled: the quorum could no longer be met)" in str(info.value)
    assert "deadline" not in str(info.value)
    sample = metrics.registry.get_sample_value
    m2 = {"member": "toy-m2", "version": "1"}
    assert sample("ensemble_member_cancelled_total", {**m2, "reason": "not_needed"}) == 1.0
    for reason in ("cut_off", "deadline", "not_needed"):
        assert sample("ensemble_member_failures_total", {**m2, "reason": reason}) is None
    assert (
        sample(
            "ensemble_member_failures_total", {"member": "toy-m0", "version": "1", "reason": "unavailable"}
        )
        == 1.0
    )


def test_calls_cut_by_the_request_deadline_are_failures() -> None:
    core, caller, metrics = make_core(policy=FanOutPolicy(member_deadline_s=30.0, request_deadline_s=0.2))
    caller.delay_s["toy-m2"] = 20.0
    result = asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    assert result.headers[MEMBERS_HEADER] == "2/3"
    m2 = {"member": "toy-m2", "version": "1"}
    assert (
        metrics.registry.get_sample_value("ensemble_member_failures_total", {**m2, "reason": "cut_off"})
        == 1.0
    )
    assert (
        metrics.registry.get_sample_value("ensemble_member_cancelled_total", {**m2, "reason": "not_needed"})
        is None
    )


def test_no_member_outcome_is_left_unretrieved() -> None:
    # All three fail in the same event-loop turn: the answer is decided on the second, and the
    # third's exception arrives after the decision. asyncio reports an exception nobody read as
    # "Task exception was never retrieved" (at ERROR level, with a traceback).
    core, caller, _ = make_core()
    caller.fail = {"toy-m0": "down", "toy-m1": "down", "toy-m2": "down"}
    reported: list[str] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["message"])
        )
        for _ in range(20):
            with pytest.raises(Unavailable):
                await core.predict(ModelRef("toy"), {"x": rows(1)})
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert reported == []


class RefusingCaller(FakeCaller):
    """Members that refuse the request itself, as TF Serving does a malformed or oversized one."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    async def send(self, member, call, timeout_s):
        raise MemberError(self.reason, f"127.0.0.1:8500: {self.reason.upper()} the request is the problem")


@pytest.mark.parametrize(
    ("reason", "error"), [("invalid_argument", InvalidArgument), ("resource_exhausted", ResourceExhausted)]
)
def test_a_request_every_member_refuses_is_the_clients_error(reason: str, error: type[Exception]) -> None:
    core, _, _ = make_core(caller=RefusingCaller(reason))
    with pytest.raises(error) as info:
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    assert str(info.value).startswith(f"ensemble toy: member toy-m0 refused the request: {reason}")


def test_model_status_follows_the_quorum() -> None:
    champion, challenger = make_manifest(version=3), make_manifest(name="toy", version=4)
    caller = FakeCaller()
    core = EnsembleCore(
        ServedManifests(default=champion, labels={"champion": champion, "challenger": challenger}), caller
    )
    assert [(s.version, s.state, s.error_code) for s in asyncio.run(core.status(ModelRef("toy")))] == [
        (4, "AVAILABLE", "OK"),
        (3, "AVAILABLE", "OK"),
    ]
    caller.fail = {"toy-m0": "down", "toy-m1": "down"}  # every manifest below its quorum
    statuses = asyncio.run(core.status(ModelRef("toy")))
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (4, "UNKNOWN", "UNAVAILABLE"),
        (3, "UNKNOWN", "UNAVAILABLE"),
    ]
    assert "quorum not available (1/3 members AVAILABLE" in statuses[0].error_message
    assert "down: toy-m0, toy-m1" in statuses[0].error_message
    by_label = asyncio.run(core.status(ModelRef("toy", label="champion")))
    assert [(s.version, s.state) for s in by_label] == [(3, "UNKNOWN")]


def test_readiness_is_the_default_manifests_quorum() -> None:
    champion = make_manifest(version=3)
    challenger = make_manifest(name="toy", version=4).model_copy(
        update={
            "members": [
                MemberRef(name=f"new-m{i}", version=2, weight=w) for i, w in enumerate((0.5, 0.3, 0.2))
            ]
        }
    )
    caller = FakeCaller()
    core = EnsembleCore(
        ServedManifests(default=champion, labels={"champion": champion, "challenger": challenger}), caller
    )
    caller.fail = {"new-m0": "down", "new-m1": "down"}
    ready, why = asyncio.run(core.ready())
    assert ready  # the challenger's trouble is reported, not a reason to stop the default traffic
    assert "toy v4: quorum not available" in why
    # The reload path judges each manifest of a snapshot on its own.
    problems = asyncio.run(core.quorum_problems([champion, challenger]))
    assert problems[0] is None
    assert problems[1] is not None
    assert "toy v4: quorum not available" in problems[1]
    caller.fail = {"toy-m0": "down", "toy-m1": "down"}
    ready, why = asyncio.run(core.ready())
    assert not ready
    assert "toy v3: quorum not available" in why


def test_without_a_manifest_every_request_is_unavailable() -> None:
    core = EnsembleCore(None, FakeCaller())
    with pytest.raises(Unavailable, match="no ensemble manifest loaded yet"):
        asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)}))
    with pytest.raises(Unavailable):
        asyncio.run(core.status(ModelRef("toy")))
    assert asyncio.run(core.ready()) == (False, NO_MANIFEST)
    core.swap(ServedManifests(default=make_manifest()))
    assert asyncio.run(core.predict(ModelRef("toy"), {"x": rows(1)})).headers[MEMBERS_HEADER] == "3/3"
