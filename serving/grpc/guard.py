"""The gateway's gRPC guard: bearer-token auth and request metrics, as a server interceptor.

Health, reflection and the Open Inference Protocol's liveness and readiness answer without the
token and are not counted as requests.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.grpc.oip import OIP_SERVICE
from serving.grpc.servicers import refuse_undecodable, tolerant_deserializer
from serving.metrics import PROTOCOL_GRPC, GatewayMetrics
from serving.settings import GatewaySettings

_OPEN_GRPC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    f"/{OIP_SERVICE}/ServerLive",
    f"/{OIP_SERVICE}/ServerReady",
)


class GrpcGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer-token auth and request metrics for every gRPC method but health and reflection.

    It also refuses request bytes that are not a valid message with INVALID_ARGUMENT (grpc alone
    answers UNKNOWN), as :class:`serving.grpc.DecodeGuard` does on the local backend.
    """

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self.expected = f"Bearer {token}" if token else None
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = str(details.method)
        if handler is None or handler.unary_unary is None or method.startswith(_OPEN_GRPC_PREFIXES):
            return handler
        decode = handler.request_deserializer
        metadata = dict(details.invocation_metadata or ())
        authorized = self.expected is None or hmac.compare_digest(
            str(metadata.get("authorization", "")), self.expected
        )
        inner = handler.unary_unary
        metrics = self.metrics

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            in_flight = metrics.in_flight.labels(PROTOCOL_GRPC)
            in_flight.inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                if not authorized:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
                await refuse_undecodable(request, context)
                response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or (
                    grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
                )
                raise
            finally:
                in_flight.dec()
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                metrics.answered(PROTOCOL_GRPC, name, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=tolerant_deserializer(decode) if decode is not None else None,
            response_serializer=handler.response_serializer,
        )
