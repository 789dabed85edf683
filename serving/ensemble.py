"""The gateway's core: one ensemble answer from many member answers, behind TF Serving's API.

:class:`EnsembleCore` implements :class:`serving.core.ServingCore` by putting together one step
per module. A predict request:

1. is resolved to the manifest it addresses (``serving.resolution``);
2. has its inputs checked against that manifest's input spec (``serving.inputs``);
3. is prepared once by the member caller (``serving.members``) and sent to every member
   concurrently, with a per-member deadline inside the overall one (``serving.fanout``); once the
   quorum can no longer be met, the calls still out are cancelled and counted as not needed, not
   as failures;
4. is combined with the manifest's combiner over the members that answered (weights
   renormalised, ``contracts.combine``) as long as the quorum holds. Below quorum the client gets
   UNAVAILABLE, DEADLINE_EXCEEDED, or the members' refusal of the request (``serving.outcome``).
   Backend trouble never becomes an internal error.

Readiness and model status follow the quorum: a manifest is AVAILABLE while enough of its members
report AVAILABLE on a replica whose circuit breaker is not open.

Opt-in extensions, invisible to plain TF Serving clients: the ``x-ensemble-detail`` request header
(``serving.detail``), and the ``x-ensemble-manifest-version`` and ``x-ensemble-members`` (``4/5``)
response headers (gRPC: trailing metadata) on every answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts import combine
from contracts.manifest import Manifest, MemberRef
from serving.batching import BatchingPolicy, MicroBatcher
from serving.core import (
    ModelMetadata,
    ModelRef,
    PredictResult,
    TensorInfo,
    VersionStatus,
    check_output_filter,
)
from serving.detail import Detail, detailed_outputs, requested_detail
from serving.errors import DeadlineExceeded, NotFound, Unavailable
from serving.fanout import FanOut, FanOutPolicy, fan_out
from serving.inputs import validate_inputs, wire_dtype
from serving.manifest_source import ServedManifests, served_version
from serving.members import MemberCaller, MemberError, PreparedCall
from serving.metrics import GatewayMetrics
from serving.outcome import below_quorum, checked
from serving.resolution import NO_MANIFEST, check_signature, every_manifest, resolve
from serving.traffic.controller import TrafficController
from serving.traffic.wiring import TrafficHook, alias_header

log = logging.getLogger(__name__)

VERSION_HEADER = "x-ensemble-manifest-version"
MEMBERS_HEADER = "x-ensemble-members"

STATUS_TIMEOUT_S = 1.0
"""How long readiness and model status wait for a member's GetModelStatus."""

MemberAnswer = dict[str, np.ndarray]


@dataclass(slots=True)
class EnsembleAnswer:
    """A combined answer (for a request or a micro-batch) and how it came about."""

    outputs: dict[str, np.ndarray]
    answered: int
    total: int
    disagreement: float | None


class EnsembleCore:
    """TF Serving's API for the ensemble; the manifests in use swap atomically on reload."""

    def __init__(
        self,
        served: ServedManifests | None,
        caller: MemberCaller,
        *,
        policy: FanOutPolicy | None = None,
        metrics: GatewayMetrics | None = None,
        batching: BatchingPolicy | None = None,
        traffic: TrafficController | None = None,
    ) -> None:
        """With ``batching``, concurrent requests are coalesced into one fan-out; ``traffic``
        routes requests between champion and challenger and shadows them per its policies.

        ``served`` is None while no manifest could be loaded yet: requests are then UNAVAILABLE.
        """
        self._served = served
        self._caller = caller
        self._policy = policy or FanOutPolicy()
        self._traffic = TrafficHook(traffic, self.answer, self._policy.request_deadline_s)
        self._metrics = metrics or GatewayMetrics()
        self._batcher: MicroBatcher[EnsembleAnswer] | None = None
        if batching is not None:
            self._batcher = MicroBatcher(batching, on_batch=self._metrics.batch_size.observe)
        self._latency_children: dict[tuple[str, int], Any] = {}
        self._weight_cache: dict[int, tuple[Manifest, combine.FloatArray]] = {}
        self._signature_cache: dict[int, tuple[Manifest, Mapping[str, TensorInfo]]] = {}
        self._publish(served)

    # --- manifests -----------------------------------------------------------------------------
    @property
    def served(self) -> ServedManifests:
        """What is served now; Unavailable while no manifest has been loaded yet."""
        if self._served is None:
            raise Unavailable(NO_MANIFEST)
        return self._served

    @property
    def loaded(self) -> ServedManifests | None:
        """What is served now, or None before the first manifest."""
        return self._served

    def swap(self, served: ServedManifests) -> None:
        """Serve ``served`` from now on; requests already running finish on the old manifests."""
        if self._served is not None and served.name != self._served.name:
            log.warning("ensemble name changed from %s to %s", self._served.name, served.name)
        self._served = served
        self._publish(served)

    def _publish(self, served: ServedManifests | None) -> None:
        if served is None:
            self._metrics.serving_manifests([])
            return
        self._metrics.serving_manifests(
            [
                (served.name, str(served_version(served.default)), ""),
                *((m.name, str(served_version(m)), label) for label, m in served.labels.items()),
            ]
        )

    # --- ServingCore ---------------------------------------------------------------------------
    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        manifest = resolve(self._served, ref)
        # Asked on every request by both adapters: built once per manifest.
        cached = self._signature_cache.get(id(manifest))
        if cached is None or cached[0] is not manifest:
            infos = {
                spec.name: TensorInfo(dtype=wire_dtype(spec), shape=tuple(spec.shape))
                for spec in manifest.inputs
            }
            cached = self._signature_cache[id(manifest)] = (manifest, infos)
        return cached[1]

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        *,
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
        request_headers: Mapping[str, str] | None = None,
    ) -> PredictResult:
        # The manifest that answers is decided here, once, from the snapshot served now.
        served = self._served
        ref, decided = self._traffic.route(served, ref, request_headers)
        manifest = resolve(served, ref)
        check_signature(manifest, ref)
        inputs = validate_inputs(manifest, inputs)
        wanted = tuple(output_filter)
        check_output_filter(wanted, [spec.name for spec in manifest.outputs])
        budget = self._policy.request_deadline_s
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        deadline = asyncio.get_running_loop().time() + budget
        detail = requested_detail(request_headers)
        outputs, answer = await self._traffic.answer(
            served, decided, manifest, (inputs, wanted, detail, deadline)
        )
        # The combined answer is known here, before anything is recorded or sent back.
        self._metrics.members_answered.observe(answer.answered)
        if answer.answered < answer.total:
            self._metrics.degraded.inc()
        if answer.disagreement is not None:
            self._metrics.disagreement.observe(answer.disagreement)
        version = served_version(manifest)
        return PredictResult(
            outputs=outputs,
            name=manifest.name,
            version=version,
            signature_name=manifest.signature_name,
            headers={
                VERSION_HEADER: str(version),
                MEMBERS_HEADER: f"{answer.answered}/{answer.total}",
                **alias_header(decided),
            },
        )

    async def answer(
        self,
        manifest: Manifest,
        inputs: Mapping[str, np.ndarray],
        output_filter: tuple[str, ...],
        detail: Detail,
        deadline: float,
    ) -> tuple[dict[str, np.ndarray], EnsembleAnswer]:
        """``manifest``'s answer to validated ``inputs``: this request's outputs, and how they came.

        With micro-batching the request may share a fan-out with others; the outputs are then its
        own rows of the batch's answer.
        """
        if self._batcher is None:
            answer = await self._one_fan_out(manifest, inputs, output_filter, detail, deadline)
            return answer.outputs, answer
        key = (
            id(manifest),
            output_filter,
            detail,
            tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items())),
        )
        budget = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(
                self._batcher.submit(
                    key,
                    inputs,
                    lambda batch, batch_deadline: self._one_fan_out(
                        manifest, batch, output_filter, detail, batch_deadline
                    ),
                    deadline,
                ),
                timeout=max(budget, 0.0),
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"ensemble {manifest.name}: no answer within the deadline of {budget:.3f}s"
            ) from None

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        manifest = resolve(self._served, ref)
        reasons: list[str] = []
        for member in manifest.members:
            try:
                member_meta = await self._caller.metadata(member, self._policy.member_deadline_s)
            except MemberError as exc:
                reasons.append(f"{member.name}: {exc.detail}")
                continue
            return ModelMetadata(
                name=manifest.name,
                version=served_version(manifest),
                signature_def=member_meta.signature_def,
            )
        raise Unavailable(
            f"ensemble {manifest.name}: no member answered GetModelMetadata ({'; '.join(reasons)})"
        )

    async def status(self, ref: ModelRef) -> list[VersionStatus]:
        """Each addressed manifest version, AVAILABLE only while its quorum can be served."""
        served = self._served
        if served is None:
            raise Unavailable(NO_MANIFEST)
        if ref.version is None and ref.label is None:
            if ref.name != served.name:
                raise NotFound(f"Could not find any versions of model {ref.name}")
            manifests = every_manifest(served)
        else:
            manifests = [resolve(served, ref)]
        manifests.sort(key=served_version, reverse=True)
        problems = await asyncio.gather(*(self._quorum_problem(m, STATUS_TIMEOUT_S) for m in manifests))
        # TF Serving has no state for "loaded but not servable now": UNKNOWN with an UNAVAILABLE
        # status says so without claiming the version was unloaded (END) or is loading.
        return [
            VersionStatus(version=served_version(m), state="AVAILABLE")
            if problem is None
            else VersionStatus(
                version=served_version(m), state="UNKNOWN", error_code="UNAVAILABLE", error_message=problem
            )
            for m, problem in zip(manifests, problems, strict=True)
        ]

    # --- readiness -----------------------------------------------------------------------------
    async def ready(self, timeout_s: float = STATUS_TIMEOUT_S) -> tuple[bool, str]:
        """Whether the default manifest's quorum can be served now, and why not.

        A challenger's trouble is named in the reason but never takes the default traffic out of
        service. (The reload path judges a new snapshot alias by alias: :meth:`quorum_problems`.)
        """
        served = self._served
        if served is None:
            return False, NO_MANIFEST
        problems = await self.quorum_problems(every_manifest(served), timeout_s)
        failing = [p for p in problems if p is not None]
        # every_manifest puts the default manifest first.
        return (problems[0] is None, "; ".join(failing) or "ready")

    async def quorum_problems(
        self, manifests: Sequence[Manifest], timeout_s: float = STATUS_TIMEOUT_S
    ) -> list[str | None]:
        """For each manifest, why its quorum cannot be served now; None where it can."""
        return list(await asyncio.gather(*(self._quorum_problem(m, timeout_s) for m in manifests)))

    async def _quorum_problem(self, manifest: Manifest, timeout_s: float) -> str | None:
        """None when enough members are AVAILABLE (behind breakers that are not open); else why not."""
        flags = await asyncio.gather(*(self._caller.available(m, timeout_s) for m in manifest.members))
        if self._quorum_holds(manifest, flags):
            return None
        down = [m.name for m, ok in zip(manifest.members, flags, strict=True) if not ok]
        return (
            f"{manifest.name} v{served_version(manifest)}: quorum not available "
            f"({sum(flags)}/{len(flags)} members AVAILABLE with a breaker not open; down: {', '.join(down)})"
        )

    # --- fan-out and combine -------------------------------------------------------------------
    def _weights(self, manifest: Manifest) -> combine.FloatArray:
        cached = self._weight_cache.get(id(manifest))
        if cached is None or cached[0] is not manifest:
            cached = (manifest, combine.method_weights(manifest.combiner.method, manifest.weights))
            self._weight_cache[id(manifest)] = cached
        return cached[1]

    def _quorum_holds(self, manifest: Manifest, answered: Sequence[bool]) -> bool:
        quorum = manifest.combiner
        return combine.quorum_holds(
            self._weights(manifest), answered, min_members=quorum.min_members, min_weight=quorum.min_weight
        )

    async def _call(
        self, member: MemberRef, call: PreparedCall, timeout_s: float, expected: Sequence[str], rows: int
    ) -> MemberAnswer:
        """One member's checked answer; its latency and failure reason go to the metrics."""
        started = time.perf_counter()
        try:
            outputs = await self._caller.send(member, call, timeout_s)
        except MemberError as exc:
            self._metrics.member_failures.labels(member.name, str(member.version), exc.reason).inc()
            raise
        finally:
            self._latency_child(member).observe(time.perf_counter() - started)
        return checked(outputs, expected, rows)

    def _latency_child(self, member: MemberRef) -> Any:
        key = (member.name, member.version)
        child = self._latency_children.get(key)
        if child is None:
            child = self._metrics.member_latency.labels(member.name, str(member.version))
            self._latency_children[key] = child
        return child

    async def _one_fan_out(
        self,
        manifest: Manifest,
        inputs: Mapping[str, np.ndarray],
        output_filter: tuple[str, ...],
        detail: Detail,
        deadline: float,
    ) -> EnsembleAnswer:
        """One fan-out of ``inputs`` to ``manifest``'s members, combined."""
        members = manifest.members
        expected = list(output_filter) or [spec.name for spec in manifest.outputs]
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        member_timeout = min(
            self._policy.member_deadline_s, max(deadline - asyncio.get_running_loop().time(), 0.0)
        )
        call = self._caller.prepare(manifest.signature_name, inputs, output_filter)
        result = await fan_out(
            members,
            lambda member: self._call(member, call, member_timeout, expected, rows),
            quorum=lambda answered: self._quorum_holds(manifest, answered),
            deadline=deadline,
        )
        self._count_unfinished(manifest, result)
        if not self._quorum_holds(manifest, result.answered):
            raise below_quorum(manifest, result)
        used = [answer for answer in result.answers if answer is not None]
        used_weights = combine.renormalized(self._weights(manifest), result.answered)[
            np.asarray(result.answered)
        ]
        answers = [{name: r[name] for name in expected} for r in used]
        try:
            combined = combine.combine(answers, used_weights, spread=detail.spread, kinds=manifest.kinds)
        except ValueError as exc:  # members that disagree on output shapes are a backend problem
            raise Unavailable(f"ensemble {manifest.name}: member answers cannot be combined: {exc}") from None
        return EnsembleAnswer(
            outputs=detailed_outputs(combined, detail, members, result.answers, expected),
            answered=len(used),
            total=len(members),
            disagreement=combined.disagreement,
        )

    def _count_unfinished(self, manifest: Manifest, result: FanOut[MemberAnswer]) -> None:
        """Calls cut off by the deadline count as failures; calls not needed any more do not."""
        for index in result.unfinished:
            member = manifest.members[index]
            if result.deadline_passed:
                self._metrics.member_failures.labels(member.name, str(member.version), "cut_off").inc()
            else:
                self._metrics.member_cancelled.labels(member.name, str(member.version), "not_needed").inc()
