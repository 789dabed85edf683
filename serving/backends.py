"""Reaching the members: persistent gRPC channels to TF Serving backends, load-balanced per member.

:class:`BackendPool` implements ``serving.ensemble.MemberCaller`` over TF Serving's
``PredictionService`` and ``ModelService``. One channel per address, opened on first use and kept;
each member round-robins over its addresses, and a connection failure is retried once on the next
replica. With hedging on, a member call still unanswered after ``hedge_after_s`` is sent to a
second replica too: the first answer wins and the other call is cancelled. A circuit breaker per
member stops calls to a member that keeps failing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import Gauge

from registry.manifest import MemberRef
from serving.breaker import BreakerState, CircuitBreaker
from serving.core import ModelMetadata
from serving.ensemble import MemberError
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
class _Route:
    """A member's replicas, whose turn is next, and its breaker."""

    addresses: list[str]
    breaker: CircuitBreaker
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def order(self) -> list[str]:
        """The addresses starting at the next one in round-robin order."""
        start = next(self.turn) % len(self.addresses)
        return self.addresses[start:] + self.addresses[:start]


def _reason(code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline"
    return str(code.name).lower()


def _one_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class BackendPool:
    """Channels, routes and breakers for every member the gateway calls."""

    def __init__(
        self,
        addresses_for: Callable[[str], list[str]],
        *,
        hedge_after_s: float | None = None,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._addresses_for = addresses_for
        self._hedge_after_s = hedge_after_s
        self._breaker_failures = breaker_failures
        self._breaker_cooldown_s = breaker_cooldown_s
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
        self._routes: dict[str, _Route] = {}
        self._breaker_gauges: dict[str, Gauge] = {}

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

    def _route(self, member: str) -> _Route:
        route = self._routes.get(member)
        if route is None:
            addresses = self._addresses_for(member)
            if not addresses:
                raise MemberError("no_backend", "no backend address is configured for this member")
            route = _Route(
                addresses=list(addresses),
                breaker=CircuitBreaker(self._breaker_failures, self._breaker_cooldown_s),
            )
            self._routes[member] = route
        return route

    def breaker_state(self, member: str) -> BreakerState | None:
        route = self._routes.get(member)
        return route.breaker.state if route else None

    async def close(self) -> None:
        """Close every channel (on shutdown)."""
        channels, self._channels = list(self._channels.values()), {}
        self._predict_stubs.clear()
        self._model_stubs.clear()
        self._raw_predict.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    def _set_breaker_metric(self, member: str, breaker: CircuitBreaker) -> None:
        if self._metrics is not None:
            # Runs after every member call: the labelled child is looked up once per member.
            gauge = self._breaker_gauges.get(member)
            if gauge is None:
                gauge = self._breaker_gauges[member] = self._metrics.breaker_open.labels(member)
            gauge.set(0.0 if breaker.state is BreakerState.CLOSED else 1.0)

    # --- MemberCaller --------------------------------------------------------------------------
    def encode(self, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]) -> bytes:
        """The ``inputs`` and ``output_filter`` fields of a PredictRequest, serialized once."""
        request = PredictRequest()
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(array))
        request.output_filter.extend(output_filter)
        return bytes(request.SerializeToString())

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

    async def predict(
        self,
        member: MemberRef,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        timeout_s: float,
        encoded: bytes | None = None,
    ) -> dict[str, np.ndarray]:
        route = self._route(member.name)
        breaker = route.breaker
        if not breaker.allow():
            raise MemberError(
                "circuit_open", f"circuit breaker open after {self._breaker_failures} consecutive failures"
            )
        if encoded is None:
            encoded = self.encode(inputs, output_filter)
        # Protobuf messages concatenate: the spec field plus the shared inputs is the whole request.
        request = self._spec_field(member, signature_name) + encoded
        try:
            response = await self._predict_routed(route, request, timeout_s)
        except MemberError:
            breaker.record_failure()
            self._set_breaker_metric(member.name, breaker)
            raise
        except asyncio.CancelledError:
            breaker.record_cancelled()
            raise
        breaker.record_success()
        self._set_breaker_metric(member.name, breaker)
        try:
            return {name: from_tensor_proto(tensor) for name, tensor in response.outputs.items()}
        except Exception as exc:  # a malformed answer is that member's failure, not ours
            raise MemberError("bad_answer", f"cannot decode the answer: {exc}") from None

    async def _predict_routed(self, route: _Route, request: bytes, timeout_s: float) -> PredictResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        order = route.order()
        if self._hedge_after_s is not None and len(order) > 1:
            return await self._hedged(order, request, deadline)
        try:
            return await self._predict_once(order[0], request, deadline)
        except MemberError as exc:
            # A replica that is down should cost one retry on its sibling, not a degraded answer.
            if exc.reason != "unavailable" or len(order) < 2 or deadline - loop.time() <= 0:
                raise
            return await self._predict_once(order[1], request, deadline)

    async def _predict_once(self, address: str, request: bytes, deadline: float) -> PredictResponse:
        timeout = deadline - asyncio.get_running_loop().time()
        if timeout <= 0:
            raise MemberError("deadline", f"{address}: no time left for the call")
        try:
            self._channel(address)
            response: PredictResponse = await self._raw_predict[address](request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise MemberError(
                _reason(exc.code()), f"{address}: {exc.code().name} {_one_line(exc.details())}".strip()
            ) from None
        return response

    async def _hedged(self, order: list[str], request: bytes, deadline: float) -> PredictResponse:
        assert self._hedge_after_s is not None
        first = asyncio.ensure_future(self._predict_once(order[0], request, deadline))
        tasks = {first}
        try:
            done, _ = await asyncio.wait(tasks, timeout=self._hedge_after_s)
            if not done or first.exception() is not None:
                tasks.add(asyncio.ensure_future(self._predict_once(order[1], request, deadline)))
            errors: list[MemberError] = []
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        return task.result()
                    if isinstance(error, MemberError):
                        errors.append(error)
                    else:
                        raise error
            raise errors[-1]
        finally:
            for task in tasks:
                task.cancel()

    async def metadata(self, member: MemberRef, timeout_s: float) -> ModelMetadata:
        route = self._route(member.name)
        request = GetModelMetadataRequest()
        request.model_spec.name = member.name
        request.model_spec.version.value = member.version
        request.metadata_field.append("signature_def")
        address = route.order()[0]
        try:
            response = await self._predict_stub(address).GetModelMetadata(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise MemberError(
                _reason(exc.code()), f"{address}: {exc.code().name} {_one_line(exc.details())}".strip()
            ) from None
        signature_def = SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(
            signature_def
        ):
            raise MemberError("bad_answer", f"{address}: metadata without a signature_def")
        return ModelMetadata(name=member.name, version=member.version, signature_def=signature_def)

    async def available(self, member: MemberRef, timeout_s: float) -> bool:
        try:
            route = self._route(member.name)
        except MemberError:
            return False
        answers = await asyncio.gather(
            *(self._status_available(a, member, timeout_s) for a in route.addresses)
        )
        return any(answers)

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
