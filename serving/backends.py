"""Reaching the members: persistent gRPC channels to TF Serving backends, load-balanced per member.

:class:`BackendPool` implements ``serving.members.MemberCaller`` over TF Serving's
``PredictionService`` and ``ModelService``. One channel per address, opened on first use and kept;
each member version round-robins over its addresses, and a connection failure is retried once on
the next replica. With hedging on, a member call still unanswered after ``hedge_after_s`` is sent
to a second replica too: the first answer wins and the other call is cancelled.

A circuit breaker per member *version* and backend address stops calls to a replica that keeps
failing, so an old version's NOT_FOUNDs during a promotion never refuse calls to the new one, and
one alias's failures never open another's breaker. A switch to new manifests drops the breakers
of versions no longer served (:meth:`BackendPool.retain`). An error the request itself caused
(``serving.members.REQUEST_FAULTS``) never counts against a breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from contracts.errors import one_line
from contracts.manifest import MemberRef
from serving.breaker import CircuitBreaker
from serving.core import ModelMetadata
from serving.members import REQUEST_FAULTS, MemberError, PreparedCall
from serving.metrics import GatewayMetrics
from serving.protos import (
    GetModelMetadataRequest,
    GetModelStatusRequest,
    ModelServiceStub,
    ModelSpec,
    PredictionServiceStub,
    PredictRequest,
    PredictResponse,
    SignatureDefMap,
)
from serving.tensors import from_tensor_proto, to_tensor_proto

_AVAILABLE = 30  # ModelVersionStatus.State.AVAILABLE
_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


@dataclass(slots=True)
class _Replica:
    """One backend address of a member version, with its own breaker."""

    address: str
    breaker: CircuitBreaker


@dataclass(slots=True)
class _Route:
    """A member version's replicas and whose turn is next."""

    replicas: list[_Replica]
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def order(self) -> list[_Replica]:
        """The replicas starting at the next one in round-robin order."""
        start = next(self.turn) % len(self.replicas)
        return self.replicas[start:] + self.replicas[:start]


def _next_allowed(replicas: Iterator[_Replica]) -> _Replica | None:
    """The next replica whose breaker lets a call through (taking its half-open probe slot)."""
    for replica in replicas:
        if replica.breaker.allow():
            return replica
    return None


def _reason(code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline"
    return str(code.name).lower()


class BackendPool:
    """Channels, routes and breakers for every member version the gateway calls."""

    def __init__(
        self,
        addresses_for: Callable[[str, str | None], list[str]],
        *,
        hedge_after_s: float | None = None,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._addresses_for = addresses_for
        self._hedge_after_s = hedge_after_s
        self._breaker_failures = breaker_failures
        self._breaker_cooldown_s = breaker_cooldown_s
        self._clock = clock
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Fail fast on a dead replica instead of queueing behind its reconnect backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._raw_predict: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._spec_fields: dict[tuple[str, int, str], bytes] = {}
        self._predict_stubs: dict[str, PredictionServiceStub] = {}
        self._model_stubs: dict[str, ModelServiceStub] = {}
        # Keyed by (addresses, member, version): one member version placed on two backend sets (a
        # challenger sharing it on backends of its own) has two routes, and two sets of breakers.
        self._routes: dict[tuple[tuple[str, ...], str, int], _Route] = {}
        # The alias each MemberRef is served under (None: no alias), set by place().
        self._placement: dict[int, tuple[MemberRef, str | None]] = {}
        # The hot path looks a route up by the MemberRef object (manifests keep theirs for life):
        # no key is built per call. The ref is kept so its id cannot be reused meanwhile.
        self._by_ref: dict[int, tuple[MemberRef, _Route]] = {}

    # --- plumbing ------------------------------------------------------------------------------
    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
            self._predict_stubs[address] = PredictionServiceStub(channel)
            self._model_stubs[address] = ModelServiceStub(channel)
            # Requests go out pre-serialized: the inputs are encoded once per fan-out, not per member.
            self._raw_predict[address] = channel.unary_unary(
                _PREDICT_METHOD, request_serializer=None, response_deserializer=PredictResponse.FromString
            )
        return channel

    def _predict_stub(self, address: str) -> PredictionServiceStub:
        self._channel(address)
        return self._predict_stubs[address]

    def _model_stub(self, address: str) -> ModelServiceStub:
        self._channel(address)
        return self._model_stubs[address]

    def place(self, placed: Iterable[tuple[str | None, MemberRef]]) -> None:
        """Record the alias each member ref is served under: its backends may depend on it."""
        for alias, member in placed:
            self._placement[id(member)] = (member, alias)
            self._by_ref.pop(id(member), None)

    def _key(self, member: MemberRef) -> tuple[tuple[str, ...], str, int]:
        """The route of ``member``: its backend addresses (which depend on its alias) and version."""
        placed = self._placement.get(id(member))
        alias = placed[1] if placed is not None and placed[0] is member else None
        return tuple(self._addresses_for(member.name, alias)), member.name, member.version

    def _route(self, member: MemberRef) -> _Route:
        cached = self._by_ref.get(id(member))
        if cached is not None and cached[0] is member:
            return cached[1]
        key = self._key(member)
        addresses = key[0]
        route = self._routes.get(key)
        if route is None:
            if not addresses:
                raise MemberError("no_backend", "no backend address is configured for this member")
            route = _Route(
                [
                    _Replica(
                        address, CircuitBreaker(self._breaker_failures, self._breaker_cooldown_s, self._clock)
                    )
                    for address in addresses
                ]
            )
            self._routes[key] = route
            if self._metrics is not None:
                for replica in route.replicas:
                    # Read at scrape time: the gauge follows the clock, not the last call.
                    child = self._metrics.breaker_open.labels(
                        member.name, str(member.version), replica.address
                    )
                    child.set_function(replica.breaker.open_gauge)
        self._by_ref[id(member)] = (member, route)
        return route

    def retain(self, members: Iterable[MemberRef]) -> None:
        """Keep routes and breakers for ``members`` only; versions a switch brings start fresh."""
        refs = list(members)
        keep = {(m.name, m.version) for m in refs}
        routes = {self._key(m) for m in refs}
        for key in [key for key in self._routes if key not in routes]:
            route = self._routes.pop(key)
            if self._metrics is not None:
                for replica in route.replicas:
                    with contextlib.suppress(KeyError):
                        self._metrics.breaker_open.remove(key[1], str(key[2]), replica.address)
        # Refs of the manifest just retired keep their placement while their version is served:
        # a request still in flight on it goes on to the same backends.
        self._placement = {
            i: (ref, alias) for i, (ref, alias) in self._placement.items() if (ref.name, ref.version) in keep
        }
        live = {id(route) for route in self._routes.values()}
        self._by_ref = {
            ref_id: (ref, route) for ref_id, (ref, route) in self._by_ref.items() if id(route) in live
        }
        self._spec_fields = {key: f for key, f in self._spec_fields.items() if key[:2] in keep}

    def breakers_open(self, member: MemberRef) -> bool:
        """Whether every replica of this member version (where it is placed) refuses calls right now."""
        route = self._routes.get(self._key(member))
        return route is not None and all(r.breaker.is_open for r in route.replicas)

    async def close(self) -> None:
        """Close every channel (on shutdown)."""
        channels, self._channels = list(self._channels.values()), {}
        self._predict_stubs.clear()
        self._model_stubs.clear()
        self._raw_predict.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    # --- MemberCaller --------------------------------------------------------------------------
    def prepare(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: tuple[str, ...]
    ) -> PreparedCall:
        """The call with its PredictRequest's ``inputs`` and ``output_filter`` fields serialized once."""
        request = PredictRequest()
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(array))
        request.output_filter.extend(output_filter)
        return PreparedCall(signature_name, inputs, output_filter, bytes(request.SerializeToString()))

    def _spec_field(self, member: MemberRef, signature_name: str) -> bytes:
        """Field 1 (``model_spec``) of a PredictRequest for this member, serialized and cached."""
        key = (member.name, member.version, signature_name)
        field = self._spec_fields.get(key)
        if field is None:
            spec = ModelSpec(name=member.name, signature_name=signature_name)
            spec.version.value = member.version
            body = spec.SerializeToString()
            field = b"\x0a" + _varint(len(body)) + body
            self._spec_fields[key] = field
        return field

    async def send(self, member: MemberRef, call: PreparedCall, timeout_s: float) -> dict[str, np.ndarray]:
        route = self._route(member)
        # Protobuf messages concatenate: the spec field plus the shared inputs is the whole request.
        request = self._spec_field(member, call.signature_name) + call.wire
        response = await self._predict_routed(route, request, timeout_s)
        try:
            return {name: from_tensor_proto(tensor) for name, tensor in response.outputs.items()}
        except Exception as exc:  # a malformed answer is that member's failure, not ours
            raise MemberError("bad_answer", f"cannot decode the answer: {exc}") from None

    def _all_open(self, route: _Route) -> MemberError:
        addresses = ", ".join(r.address for r in route.replicas)
        return MemberError(
            "circuit_open",
            f"circuit breaker open on {addresses} after {self._breaker_failures} consecutive failures",
        )

    async def _predict_routed(self, route: _Route, request: bytes, timeout_s: float) -> PredictResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        replicas = iter(route.order())
        first = _next_allowed(replicas)
        if first is None:
            raise self._all_open(route)
        if self._hedge_after_s is not None and len(route.replicas) > 1:
            return await self._hedged(first, replicas, request, deadline)
        try:
            return await self._attempt(first, request, deadline)
        except MemberError as exc:
            # A replica that is down should cost one retry on its sibling, not a degraded answer.
            if exc.reason != "unavailable" or deadline - loop.time() <= 0:
                raise
            second = _next_allowed(replicas)
            if second is None:
                raise
            return await self._attempt(second, request, deadline)

    async def _attempt(self, replica: _Replica, request: bytes, deadline: float) -> PredictResponse:
        """One call to one replica; its outcome goes to that replica's breaker."""
        address, breaker = replica.address, replica.breaker
        timeout = deadline - asyncio.get_running_loop().time()
        if timeout <= 0:
            breaker.record_inconclusive()
            raise MemberError("deadline", f"{address}: no time left for the call")
        try:
            self._channel(address)
            response: PredictResponse = await self._raw_predict[address](request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            reason = _reason(exc.code())
            if reason in REQUEST_FAULTS:
                breaker.record_inconclusive()  # the request's fault, not the replica's
            else:
                breaker.record_failure()
            raise MemberError(
                reason, f"{address}: {exc.code().name} {one_line(exc.details() or '', limit=200)}".strip()
            ) from None
        except asyncio.CancelledError:
            breaker.record_inconclusive()
            raise
        breaker.record_success()
        return response

    async def _hedged(
        self, first: _Replica, others: Iterator[_Replica], request: bytes, deadline: float
    ) -> PredictResponse:
        assert self._hedge_after_s is not None
        first_task = asyncio.ensure_future(self._attempt(first, request, deadline))
        tasks = {first_task}
        try:
            done, _ = await asyncio.wait(tasks, timeout=self._hedge_after_s)
            if not done or first_task.exception() is not None:
                second = _next_allowed(others)
                if second is not None:
                    tasks.add(asyncio.ensure_future(self._attempt(second, request, deadline)))
            errors: list[MemberError] = []
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                # Every finished call's outcome is read, so none is left unretrieved.
                outcomes = [(task, task.exception()) for task in done]
                for task, error in outcomes:
                    if error is None:
                        return task.result()
                for _, error in outcomes:
                    if not isinstance(error, MemberError):
                        raise error  # type: ignore[misc]
                    errors.append(error)
            raise errors[-1]
        finally:
            for task in tasks:
                task.cancel()

    async def metadata(self, member: MemberRef, timeout_s: float) -> ModelMetadata:
        route = self._route(member)
        request = GetModelMetadataRequest()
        request.model_spec.name = member.name
        request.model_spec.version.value = member.version
        request.metadata_field.append("signature_def")
        order = route.order()
        address = next((r.address for r in order if not r.breaker.is_open), order[0].address)
        try:
            response = await self._predict_stub(address).GetModelMetadata(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise MemberError(
                _reason(exc.code()),
                f"{address}: {exc.code().name} {one_line(exc.details() or '', limit=200)}".strip(),
            ) from None
        signature_def = SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(
            signature_def
        ):
            raise MemberError("bad_answer", f"{address}: metadata without a signature_def")
        return ModelMetadata(name=member.name, version=member.version, signature_def=signature_def)

    async def available(self, member: MemberRef, timeout_s: float) -> bool:
        """AVAILABLE on some replica whose breaker is not open: a call to it can be answered now."""
        try:
            route = self._route(member)
        except MemberError:
            return False
        answers = await asyncio.gather(
            *(self._status_available(r.address, member, timeout_s) for r in route.replicas)
        )
        return any(ok and not r.breaker.is_open for r, ok in zip(route.replicas, answers, strict=True))

    async def _status_available(self, address: str, member: MemberRef, timeout_s: float) -> bool:
        request = GetModelStatusRequest()
        request.model_spec.name = member.name
        request.model_spec.version.value = member.version
        try:
            response = await self._model_stub(address).GetModelStatus(request, timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return any(
            s.version == member.version and s.state == _AVAILABLE for s in response.model_version_status
        )
