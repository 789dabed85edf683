"""The gateway's core: one ensemble answer from many member answers, behind TF Serving's API.

:class:`EnsembleCore` implements :class:`serving.core.ServingCore`. A predict request is checked
against the manifest's input spec, sent to every member concurrently with a per-member deadline
inside the overall one, and combined with the manifest's combiner over the members that answered
(weights renormalised) as long as the quorum holds. Once the quorum can no longer be met, the
calls still out are cancelled and counted as not needed, not as failures. Below quorum the answer
is UNAVAILABLE naming each failing member and why; an overall deadline that passes first is
DEADLINE_EXCEEDED; when the members refused the request itself (``REQUEST_FAULTS``), the client
gets that refusal. Backend trouble never becomes an internal error.

Readiness and model status follow the quorum: a manifest is AVAILABLE while enough of its members
report AVAILABLE on a replica whose circuit breaker is not open.

Opt-in extensions, invisible to plain TF Serving clients:

* request header ``x-ensemble-detail: spread`` adds ``<output>:spread`` (weighted standard
  deviation across members); ``x-ensemble-detail: members`` adds that and ``<output>:<member>``
  for each member that answered;
* every answer carries ``x-ensemble-manifest-version`` and ``x-ensemble-members`` (``4/5``) as
  response headers (gRPC: trailing metadata).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from contracts import combine
from contracts.manifest import Manifest, MemberRef, TensorSpec
from serving.batching import BatchingPolicy, MicroBatcher
from serving.core import (
    ModelMetadata,
    ModelRef,
    PredictResult,
    TensorInfo,
    VersionStatus,
    check_output_filter,
)
from serving.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.manifest_source import ServedManifests, served_version
from serving.metrics import GatewayMetrics

log = logging.getLogger(__name__)

DETAIL_HEADER = "x-ensemble-detail"
VERSION_HEADER = "x-ensemble-manifest-version"
MEMBERS_HEADER = "x-ensemble-members"
SPREAD_SUFFIX = ":spread"

STATUS_TIMEOUT_S = 1.0
"""How long readiness and model status wait for a member's GetModelStatus."""

NO_MANIFEST = (
    "no ensemble manifest loaded yet: the manifest source has not answered since the gateway started"
)

REQUEST_FAULTS = frozenset({"invalid_argument", "resource_exhausted"})
"""Member failure reasons the request itself caused (malformed, or too large): they say nothing about
the member, never count against its breaker, and reach the client as what they are."""
_REFUSALS: dict[str, type[InvalidArgument | ResourceExhausted]] = {
    "invalid_argument": InvalidArgument,
    "resource_exhausted": ResourceExhausted,
}

_DTYPES: dict[str, np.dtype[np.generic]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
    "string": np.dtype(np.object_),
}


class MemberError(Exception):
    """A member gave no usable answer. ``reason`` is a short metric label, ``detail`` one line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MemberCaller(Protocol):
    """How the core reaches members (``serving.backends.BackendPool`` over gRPC; fakes in tests)."""

    def encode(self, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]) -> Any:
        """The inputs in wire form, computed once per fan-out and handed to every member call."""
        ...

    async def predict(
        self,
        member: MemberRef,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        timeout_s: float,
        encoded: Any = None,
    ) -> dict[str, np.ndarray]:
        """The member's outputs; raises MemberError. ``encoded`` is :meth:`encode`'s answer."""
        ...

    async def metadata(self, member: MemberRef, timeout_s: float) -> ModelMetadata:
        """The member's GetModelMetadata answer; raises MemberError."""
        ...

    async def available(self, member: MemberRef, timeout_s: float) -> bool:
        """Whether the member's version is AVAILABLE where a call can reach it (breaker not open)."""
        ...


@dataclass(frozen=True, slots=True)
class FanOutPolicy:
    """The deadlines of a fan-out (from the gateway settings)."""

    member_deadline_s: float = 2.0
    request_deadline_s: float = 5.0


@dataclass(slots=True)
class EnsembleAnswer:
    """A combined answer (for a request or a micro-batch) and how it came about."""

    outputs: dict[str, np.ndarray]
    answered: int
    total: int
    disagreement: float | None


@dataclass(frozen=True, slots=True)
class _Detail:
    spread: bool = False
    members: bool = False


def _detail(headers: Mapping[str, str] | None) -> _Detail:
    if not headers:
        return _Detail()
    value = headers.get(DETAIL_HEADER, "")
    words = {word.strip().lower() for word in value.split(",") if word.strip()}
    members = "members" in words
    return _Detail(spread=members or "spread" in words, members=members)


def wire_dtype(spec: TensorSpec) -> np.dtype[np.generic]:
    """The numpy dtype a manifest tensor travels as (strings as Python bytes objects)."""
    return _DTYPES[spec.dtype]


def validate_inputs(manifest: Manifest, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Check names, dtypes and shapes against the manifest before any fan-out; the inputs as sent on.

    An input of one value per instance is taken in both forms clients write, ``[n]`` (a scalar per
    record) and ``[n, 1]`` (a one-element list per record), and sent on in the form the manifest
    declares: ensembles exported with ``[-1, 1]`` keep serving plain records, and clients that
    learned the nested form keep working with ``[-1]`` exports.
    """
    expected = {spec.name: spec for spec in manifest.inputs}
    missing = sorted(set(expected) - set(inputs))
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise InvalidArgument(f"{'; '.join(parts)}; expected {', '.join(expected)}")
    conformed: dict[str, np.ndarray] | None = None
    batch: int | None = None
    for name, spec in expected.items():
        array = inputs[name]
        want = wire_dtype(spec)
        if array.dtype != want and not (want == np.dtype(np.object_) and array.dtype.kind in {"S", "U", "O"}):
            raise InvalidArgument(f"input {name!r} must be {spec.dtype}, got {array.dtype.name}")
        if array.ndim != len(spec.shape):
            single = _as_single_value_form(array, spec.shape)
            if single is None:
                raise InvalidArgument(
                    f"input {name!r} must have shape {_shape_text(spec.shape)}, got {list(array.shape)}"
                )
            array = single
            conformed = conformed if conformed is not None else dict(inputs)
            conformed[name] = array
        for got, dim in zip(array.shape[1:], spec.shape[1:], strict=True):
            if dim != -1 and got != dim:
                raise InvalidArgument(
                    f"input {name!r} must have shape {_shape_text(spec.shape)}, got {list(array.shape)}"
                )
        if batch is None:
            batch = int(array.shape[0])
        elif array.shape[0] != batch:
            raise InvalidArgument(
                f"all inputs must share the batch dimension: input {name!r} has {array.shape[0]} rows, "
                f"others {batch}"
            )
    return inputs if conformed is None else conformed


def _as_single_value_form(array: np.ndarray, shape: Sequence[int]) -> np.ndarray | None:
    """``array`` ([n] or [n, 1]) reshaped to a one-value-per-instance ``shape``; None if it is not one."""
    if list(shape) == [-1] and array.ndim == 2 and array.shape[1] == 1:
        return array.reshape(-1)
    if list(shape) == [-1, 1] and array.ndim == 1:
        return array.reshape(-1, 1)
    return None


def _shape_text(shape: Sequence[int]) -> str:
    return (
        "["
        + ", ".join("batch" if i == 0 else ("any" if d == -1 else str(d)) for i, d in enumerate(shape))
        + "]"
    )


def _as_wire(manifest: Manifest, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strings in any numpy flavour become the object dtype the backend client sends."""
    out: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        array = inputs[spec.name]
        out[spec.name] = (
            array.astype(np.object_) if spec.dtype == "string" and array.dtype.kind != "O" else array
        )
    return out


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
    ) -> None:
        """With ``batching``, concurrent requests are coalesced into one fan-out.

        ``served`` is None while no manifest could be loaded yet: requests are then UNAVAILABLE.
        """
        self._served = served
        self._caller = caller
        self._policy = policy or FanOutPolicy()
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
        gauge = self._metrics.manifest_info
        gauge.clear()
        if served is None:
            return
        gauge.labels(served.name, str(served_version(served.default)), "").set(1)
        for label, manifest in served.labels.items():
            gauge.labels(manifest.name, str(served_version(manifest)), label).set(1)

    def _resolve(self, ref: ModelRef, served: ServedManifests | None = None) -> Manifest:
        served = served or self._served
        if served is None:
            raise Unavailable(NO_MANIFEST)
        if ref.name != served.name:
            raise NotFound(f"Servable not found for request: Latest({ref.name})")
        if ref.label:
            manifest = served.labels.get(ref.label)
            if manifest is None:
                known = ", ".join(sorted(served.labels)) or "none"
                raise NotFound(f"Unrecognized servable version label: {ref.label} (labels served: {known})")
            return manifest
        if ref.version is not None:
            for manifest in self._all(served):
                if served_version(manifest) == ref.version:
                    return manifest
            raise NotFound(f"Servable not found for request: Specific({ref.name}, {ref.version})")
        return served.default

    @staticmethod
    def _all(served: ServedManifests) -> list[Manifest]:
        seen: dict[int, Manifest] = {served_version(served.default): served.default}
        for manifest in served.labels.values():
            seen.setdefault(served_version(manifest), manifest)
        return list(seen.values())

    def _check_signature(self, manifest: Manifest, ref: ModelRef) -> None:
        if ref.signature_name and ref.signature_name != manifest.signature_name:
            raise InvalidArgument(
                f'Serving signature name: "{ref.signature_name}" not found in signature def'
            )

    # --- ServingCore ---------------------------------------------------------------------------
    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        manifest = self._resolve(ref)
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
        manifest = self._resolve(ref)
        self._check_signature(manifest, ref)
        inputs = validate_inputs(manifest, inputs)
        wanted = tuple(output_filter)
        check_output_filter(wanted, [spec.name for spec in manifest.outputs])
        detail = _detail(request_headers)
        budget = self._policy.request_deadline_s
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        wire = _as_wire(manifest, inputs)

        if self._batcher is not None:
            key = (
                id(manifest),
                wanted,
                detail,
                tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(wire.items())),
            )
            try:
                outputs, answer = await asyncio.wait_for(
                    self._batcher.submit(
                        key,
                        wire,
                        lambda batch, batch_deadline: self._answer(
                            manifest, batch, wanted, detail, batch_deadline
                        ),
                        deadline,
                    ),
                    timeout=max(budget, 0.0),
                )
            except TimeoutError:
                raise DeadlineExceeded(
                    f"ensemble {manifest.name}: no answer within the deadline of {budget:.3f}s"
                ) from None
        else:
            answer = await self._answer(manifest, wire, wanted, detail, deadline)
            outputs = answer.outputs

        self._metrics.members_answered.observe(answer.answered)
        if answer.answered < answer.total:
            self._metrics.degraded.inc()
        if answer.disagreement is not None:
            self._metrics.disagreement.observe(answer.disagreement)
        return PredictResult(
            outputs=outputs,
            name=manifest.name,
            version=served_version(manifest),
            signature_name=manifest.signature_name,
            headers={
                VERSION_HEADER: str(served_version(manifest)),
                MEMBERS_HEADER: f"{answer.answered}/{answer.total}",
            },
        )

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        manifest = self._resolve(ref)
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
            manifests = self._all(served)
        else:
            manifests = [self._resolve(ref, served)]
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
    async def ready(
        self, timeout_s: float = STATUS_TIMEOUT_S, served: ServedManifests | None = None
    ) -> tuple[bool, str]:
        """Whether the quorum can be served, and why not.

        For what is served now: the default manifest's quorum (a challenger's trouble is named in
        the reason but never takes the default traffic out of service). For a candidate
        (``served``, asked by the reload path before swapping): every manifest's quorum, so a
        moved alias is followed only once its members have loaded.
        """
        candidate = served is not None
        served = served or self._served
        if served is None:
            return False, NO_MANIFEST
        manifests = self._all(served)
        problems = await asyncio.gather(*(self._quorum_problem(m, timeout_s) for m in manifests))
        failing = [p for p in problems if p is not None]
        if candidate:
            return (not failing, "; ".join(failing) or "ready")
        # _all puts the default manifest first.
        return (problems[0] is None, "; ".join(failing) or "ready")

    async def _quorum_problem(self, manifest: Manifest, timeout_s: float) -> str | None:
        """None when enough members are AVAILABLE (behind breakers that are not open); else why not."""
        flags = await asyncio.gather(*(self._caller.available(m, timeout_s) for m in manifest.members))
        if combine.quorum_holds(
            manifest.weights,
            flags,
            min_members=manifest.combiner.min_members,
            min_weight=manifest.combiner.min_weight,
        ):
            return None
        down = [m.name for m, ok in zip(manifest.members, flags, strict=True) if not ok]
        return (
            f"{manifest.name} v{served_version(manifest)}: quorum not available "
            f"({sum(flags)}/{len(flags)} members AVAILABLE with a breaker not open; down: {', '.join(down)})"
        )

    # --- fan-out and combine -------------------------------------------------------------------
    async def _call(
        self,
        member: MemberRef,
        manifest: Manifest,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        timeout_s: float,
        encoded: Any,
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            outputs = await self._caller.predict(
                member, manifest.signature_name, inputs, output_filter, timeout_s, encoded
            )
        except MemberError as exc:
            self._metrics.member_failures.labels(member.name, str(member.version), exc.reason).inc()
            raise
        finally:
            self._latency_child(member).observe(time.perf_counter() - started)
        return outputs

    def _latency_child(self, member: MemberRef) -> Any:
        key = (member.name, member.version)
        child = self._latency_children.get(key)
        if child is None:
            child = self._metrics.member_latency.labels(member.name, str(member.version))
            self._latency_children[key] = child
        return child

    def _weights(self, manifest: Manifest) -> combine.FloatArray:
        cached = self._weight_cache.get(id(manifest))
        if cached is None or cached[0] is not manifest:
            cached = (manifest, combine.method_weights(manifest.combiner.method, manifest.weights))
            self._weight_cache[id(manifest)] = cached
        return cached[1]

    async def _answer(
        self,
        manifest: Manifest,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        detail: _Detail,
        deadline: float,
    ) -> EnsembleAnswer:
        loop = asyncio.get_running_loop()
        members = manifest.members
        weights = self._weights(manifest)
        quorum = manifest.combiner
        expected = list(output_filter) or [spec.name for spec in manifest.outputs]
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        member_timeout = min(self._policy.member_deadline_s, max(deadline - loop.time(), 0.0))

        encoded = self._caller.encode(inputs, output_filter)
        tasks: dict[asyncio.Task[dict[str, np.ndarray]], int] = {
            asyncio.create_task(self._call(m, manifest, inputs, output_filter, member_timeout, encoded)): i
            for i, m in enumerate(members)
        }
        results: list[dict[str, np.ndarray] | None] = [None] * len(members)
        failures: dict[int, str] = {}
        reasons: dict[int, str] = {}
        pending = set(tasks)
        # One callback per member call decides when the answer is known: every member is in, or
        # even every pending member answering could not make the quorum. (asyncio.wait in a loop
        # would re-register a callback on every pending call each time one answers.)
        decided: asyncio.Future[bool] = loop.create_future()

        def on_done(task: asyncio.Task[dict[str, np.ndarray]]) -> None:
            pending.discard(task)
            if task.cancelled():
                return
            # Read every outcome, also one that arrives after the decision: an exception left
            # unread is logged by asyncio as "Task exception was never retrieved".
            error = task.exception()
            if decided.done():
                return
            index = tasks[task]
            if error is None:
                try:
                    results[index] = _checked(task.result(), expected, rows)
                except MemberError as exc:
                    failures[index] = f"{exc.reason} ({exc.detail})"
            elif isinstance(error, MemberError):
                failures[index] = f"{error.reason} ({error.detail})"
                reasons[index] = error.reason
            else:  # a member bug must not turn into a 500
                failures[index] = f"error ({type(error).__name__}: {error})"
                log.error("unexpected error calling member %s", members[index].name, exc_info=error)
            if not pending:
                decided.set_result(False)
            elif index in failures:
                could = [results[i] is not None or t in pending for t, i in tasks.items()]
                if not combine.quorum_holds(
                    weights, could, min_members=quorum.min_members, min_weight=quorum.min_weight
                ):
                    decided.set_result(False)

        for task in tasks:
            task.add_done_callback(on_done)

        def deadline_passed() -> None:
            if not decided.done():
                decided.set_result(True)

        timer = loop.call_at(deadline, deadline_passed)
        try:
            cut_by_deadline = await decided
        finally:
            timer.cancel()
            for task in pending:
                task.cancel()
        for task in pending:
            index = tasks[task]
            member = members[index]
            if cut_by_deadline:
                failures.setdefault(index, "cut_off (no answer before the request deadline passed)")
                self._metrics.member_failures.labels(member.name, str(member.version), "cut_off").inc()
            else:
                # The quorum could no longer be met: this call was cancelled, it did not fail.
                failures.setdefault(index, "not_needed (cancelled: the quorum could no longer be met)")
                self._metrics.member_cancelled.labels(member.name, str(member.version), "not_needed").inc()

        answered = [r is not None for r in results]
        if not combine.quorum_holds(
            weights, answered, min_members=quorum.min_members, min_weight=quorum.min_weight
        ):
            why = "; ".join(f"{members[i].name}: {failures[i]}" for i in sorted(failures))
            summary = (
                f"ensemble {manifest.name} v{served_version(manifest)}: "
                f"{sum(answered)}/{len(members)} members answered, quorum needs "
                f"{quorum.min_members} member(s) and weight {quorum.min_weight:g}"
            )
            if cut_by_deadline:
                raise DeadlineExceeded(f"{summary}; deadline passed; {why}")
            refusal = _refusal(manifest, reasons, failures, pending={tasks[t] for t in pending})
            if refusal is not None:
                raise refusal
            raise Unavailable(f"{summary}; {why}")

        used = [r for r in results if r is not None]
        used_weights = combine.renormalized(weights, answered)[np.asarray(answered)]
        try:
            outputs: dict[str, np.ndarray] = combine.combine_outputs(
                [{name: r[name] for name in expected} for r in used], used_weights
            )
        except ValueError as exc:  # members that disagree on output shapes are a backend problem
            raise Unavailable(f"ensemble {manifest.name}: member answers cannot be combined: {exc}") from None
        disagreement: float | None = None
        first = expected[0]
        if len(used) > 1:
            spread_first = combine.weighted_spread(np.stack([r[first] for r in used]), used_weights)
            disagreement = float(np.mean(spread_first)) if spread_first.size else 0.0
        if detail.spread:
            for name in expected:
                outputs[name + SPREAD_SUFFIX] = combine.weighted_spread(
                    np.stack([r[name] for r in used]), used_weights
                )
        if detail.members:
            for member, result in zip(members, results, strict=True):
                if result is not None:
                    for name in expected:
                        outputs[f"{name}:{member.name}"] = result[name]
        return EnsembleAnswer(
            outputs=outputs, answered=len(used), total=len(members), disagreement=disagreement
        )


def _refusal(
    manifest: Manifest, reasons: Mapping[int, str], failures: Mapping[int, str], pending: set[int]
) -> InvalidArgument | ResourceExhausted | None:
    """The request's own fault, when every member that failed refused the request itself."""
    failed = [i for i in failures if i not in pending]
    if not failed or any(reasons.get(i) not in REQUEST_FAULTS for i in failed):
        return None
    first = min(failed)
    member = manifest.members[first].name
    return _REFUSALS[reasons[first]](
        f"ensemble {manifest.name}: member {member} refused the request: {failures[first]}"
    )


def _checked(outputs: dict[str, np.ndarray], expected: Sequence[str], rows: int) -> dict[str, np.ndarray]:
    """A member answer that lacks an output or has the wrong rows counts as that member failing."""
    for name in expected:
        array = outputs.get(name)
        if array is None:
            raise MemberError("bad_answer", f"no output {name!r} in the answer")
        if array.ndim == 0 or array.shape[0] != rows:
            raise MemberError("bad_answer", f"output {name!r} has shape {list(array.shape)} for {rows} rows")
    return outputs
