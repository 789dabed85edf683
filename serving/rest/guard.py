"""The gateway's REST guard: request metrics, bearer-token auth and the body size limit, in pure ASGI.

Probes (liveness, readiness, metrics, in each protocol's spelling) answer without the token and
are not counted as requests. Refusals carry TF Serving's error body, ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving.metrics import PROTOCOL_REST, GatewayMetrics
from serving.settings import GatewaySettings

# ASGI types, spelled out to keep the middleware free of a framework dependency.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes answer without the bearer token: liveness and readiness, in each protocol's spelling.
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"})


async def _send_error(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """TF Serving's error body, ``{"error": ...}``, straight onto the ASGI channel."""
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Request metrics, bearer-token auth and the body size limit, as one pure ASGI layer."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self.expected = f"Bearer {token}".encode() if token else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_seen = [500]
        in_flight = self.metrics.in_flight.labels(PROTOCOL_REST)
        in_flight.inc()

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracked)
        finally:
            in_flight.dec()
            self.metrics.answered(PROTOCOL_REST, str(status_seen[0]), time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if self.expected is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _send_error(
                    send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")]
                )
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large(send)
            return
        received = 0
        response_started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
            return message

        async def send_watch(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_watch)
        except _TooLarge:
            if not response_started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await _send_error(send, 413, f"request body exceeds the limit of {self.max_body} bytes")
