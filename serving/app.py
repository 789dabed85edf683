"""The gateway process: REST and gRPC on one event loop, around one :class:`EnsembleCore`.

``create_app`` builds the FastAPI app (TF Serving's REST API from the shared adapter, plus
``/healthz``, ``/readyz``, ``/metrics``, bearer-token auth, the body size limit and request
metrics); ``create_grpc_server`` builds the grpc.aio server (TF Serving's services from the shared
adapter, gRPC health and reflection, the same auth and metrics as an interceptor). ``run`` starts
both on uvloop, watches the manifest source, and on SIGTERM stops accepting, lets in-flight
requests finish (up to ``drain_timeout_s``) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from grpc_health.v1 import health, health_pb2

from serving.backends import BackendPool
from serving.batching import BatchingPolicy
from serving.ensemble import EnsembleCore, FanOutPolicy
from serving.grpc.oip import OIP_SERVICE
from serving.grpc.servicers import refuse_undecodable, tolerant_deserializer
from serving.last_good import LastGoodStore, SavedManifests
from serving.manifest_source import (
    FileManifestSource,
    ManifestLoadError,
    ManifestSource,
    RegistryManifestSource,
    ServedManifests,
    first_load,
    served_version,
    watch,
)
from serving.metrics import CONTENT_TYPE, PROTOCOL_GRPC, PROTOCOL_REST, GatewayMetrics
from serving.oip.service import OipService
from serving.settings import GatewaySettings

log = logging.getLogger("serving.gateway")

# ASGI types, spelled out to keep the middleware free of a framework dependency.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes answer without the bearer token: liveness and readiness, in each protocol's spelling.
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"})
_OPEN_GRPC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    f"/{OIP_SERVICE}/ServerLive",
    f"/{OIP_SERVICE}/ServerReady",
)
_PREDICTION_SERVICES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    OIP_SERVICE,
)
FIRST_RETRY_S = 0.5
"""The first wait before loading the manifest source again, when it failed at start (then doubled)."""


class StartupError(Exception):
    """The gateway cannot start (a port is taken, ...); the message is one line for the user."""


class Gateway:
    """Everything one gateway process holds: settings, metrics, the core and its member clients.

    It starts without the registry when it has to: with the last-known-good manifest when one is
    saved, else with no manifest (every request UNAVAILABLE, not ready) while it retries with
    backoff. Either way it keeps polling, and serves the registry's answer once it comes.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        source: ManifestSource,
        served: ServedManifests | None,
        metrics: GatewayMetrics | None = None,
        last_good: LastGoodStore | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.metrics = metrics or GatewayMetrics()
        self.last_good = last_good
        self.pool = BackendPool(
            settings.addresses_for,
            hedge_after_s=settings.hedge_after_s,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            max_message_bytes=member_message_bytes(settings),
            metrics=self.metrics,
        )
        batching = (
            BatchingPolicy(
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_delay_ms / 1000,
                max_in_flight=settings.max_inflight_batches,
            )
            if settings.batching
            else None
        )
        self.core = EnsembleCore(
            served,
            self.pool,
            policy=FanOutPolicy(
                member_deadline_s=settings.member_deadline_s,
                request_deadline_s=settings.request_deadline_s,
            ),
            metrics=self.metrics,
            batching=batching,
        )
        self.oip = OipService(
            self.core, server_name="tf-ensemble gateway", platform="ensemble", ready=self.check_ready
        )
        self.health = health.aio.HealthServicer()
        self.draining = False
        self.from_last_good: SavedManifests | None = None
        """Set while serving the last-known-good file because the source has not answered."""
        self.source_error = ""
        """Why the source could not be loaded at start (while that still matters)."""
        self._ready = False
        self._ready_reason = "starting"
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> Gateway:
        """Load the manifests once and build the gateway.

        A source that answers no (a bad file, no such ensemble or alias) is ManifestLoadError: the
        settings are wrong. One that cannot be reached leaves the gateway on its last-known-good
        manifest, or on none, and :meth:`start_background` keeps trying.
        """
        source = manifest_source(settings)
        store = (
            LastGoodStore(settings.last_good_manifest, source.describe())
            if settings.last_good_manifest is not None and isinstance(source, RegistryManifestSource)
            else None
        )
        try:
            served = await source.load()
        except ManifestLoadError as exc:
            if not exc.transient:
                raise
            gateway = cls(settings, source, None, metrics, store)
            gateway._start_without_source(exc)
            return gateway
        gateway = cls(settings, source, served, metrics, store)
        gateway.metrics.reloads.labels("loaded").inc()
        await gateway._save_last_good(served)
        return gateway

    def _start_without_source(self, error: ManifestLoadError) -> None:
        self.source_error = str(error)
        self.metrics.reloads.labels("failed").inc()
        saved: SavedManifests | None = None
        if self.last_good is not None:
            try:
                saved = self.last_good.load()
            except ManifestLoadError as bad:
                log.warning("the last-known-good manifest cannot be used: %s", bad)
        if saved is None:
            log.warning("no manifest to serve yet, retrying with backoff: %s", error)
            return
        self.core.swap(saved.served)
        self.from_last_good = saved
        self.metrics.last_good.set(1)
        log.warning(
            "serving the last-known-good manifest saved %s (%s v%s) from %s: %s",
            saved.saved_at,
            saved.served.name,
            served_version(saved.served.default),
            self.last_good.path if self.last_good else "",
            error,
        )

    async def _save_last_good(self, served: ServedManifests) -> None:
        if self.last_good is None:
            return
        try:
            await asyncio.to_thread(self.last_good.save, served)
        except OSError as exc:
            self.metrics.last_good_saves.labels("failed").inc()
            log.warning("cannot save the last-known-good manifest to %s: %s", self.last_good.path, exc)
            return
        self.metrics.last_good_saves.labels("saved").inc()

    def _source_answered(self, served: ServedManifests) -> None:
        """The source answered again: what it says is served now (switched, or the same)."""
        if self.from_last_good is not None or self.source_error:
            log.info("manifest source %s answers again", self.source.describe())
        self.from_last_good = None
        self.source_error = ""
        self.metrics.last_good.set(0)

    # --- readiness and reload ------------------------------------------------------------------
    async def check_ready(self) -> tuple[bool, str]:
        if self.draining:
            ready, reason = False, "draining"
        else:
            ready, reason = await self.core.ready()
            if self.core.loaded is None:
                reason = f"{reason} (last error: {self.source_error}); retrying"
            elif self.from_last_good is not None:
                reason = (
                    f"serving the last-known-good manifest saved {self.from_last_good.saved_at}, the "
                    f"manifest source has not answered since start ({self.source_error}); {reason}"
                )
        if ready != self._ready:
            log.info("readiness: %s (%s)", "ready" if ready else "not ready", reason)
        self._ready, self._ready_reason = ready, reason
        status = (
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *_PREDICTION_SERVICES):
            await self.health.set(service, status)
        return ready, reason

    async def _monitor_readiness(self, interval_s: float) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check_ready()
            await asyncio.sleep(interval_s)

    async def _swap(self, served: ServedManifests) -> bool:
        """Serve ``served`` once its members' quorum is loaded on the backends; else retry later.

        The registry sync and the backends poll too, so right after an alias moves the new
        member versions may not be loaded yet: switching then would fail requests that the old
        manifest still answers.
        """
        ready, reason = await self.core.ready(served=served)
        if not ready:
            self.metrics.reloads.labels("waiting").inc()
            log.info("new manifest not switched to yet, members still loading: %s", reason)
            return False
        self._take(served)
        await self._save_last_good(served)
        return True

    def _take(self, served: ServedManifests) -> None:
        self.core.swap(served)
        # Breakers belong to member versions: the ones no longer served go, new ones start closed.
        self.pool.retain(
            m for manifest in (served.default, *served.labels.values()) for m in manifest.members
        )
        self.metrics.reloads.labels("loaded").inc()
        self._source_answered(served)
        versions = {label: served_version(m) for label, m in served.labels.items()}
        log.info("manifest loaded: %s v%s %s", served.name, served_version(served.default), versions or "")

    def _loaded(self, served: ServedManifests) -> None:
        if served == self.core.loaded:
            self._source_answered(served)

    def _reload_failed(self, error: ManifestLoadError) -> None:
        self.metrics.reloads.labels("failed").inc()
        log.warning("manifest reload failed, still serving the previous one: %s", error)

    def _first_load_failed(self, error: ManifestLoadError, retry_in_s: float) -> None:
        self.metrics.reloads.labels("failed").inc()
        self.source_error = str(error)
        log.warning("no manifest yet, retrying in %.1fs: %s", retry_in_s, error)

    async def _watch(self) -> None:
        current = self.core.loaded
        if current is None:
            current = await first_load(
                self.source,
                first_delay_s=min(FIRST_RETRY_S, self.settings.poll_interval_s),
                max_delay_s=self.settings.poll_interval_s,
                on_error=self._first_load_failed,
            )
            # Nothing is served yet: the first answer beats none, whatever its members' state.
            self._take(current)
            await self._save_last_good(current)
            await self.check_ready()
        await watch(
            self.source,
            current,
            self.settings.poll_interval_s,
            self._swap,
            self._reload_failed,
            on_loaded=self._loaded,
        )

    def start_background(self) -> None:
        """Start watching the manifest source and the members' readiness."""
        jobs = {"manifest watch": self._watch(), "readiness monitor": self._monitor_readiness(2.0)}
        for name, job in jobs.items():
            task = asyncio.create_task(job, name=name)
            task.add_done_callback(_report_stopped)
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pool.close()


def member_message_bytes(settings: GatewaySettings) -> int:
    """The largest message exchanged with members: a request decoded up to its bound, plus framing."""
    return max(settings.max_body_bytes * 4, settings.max_decoded_bytes + 1024 * 1024, 16 * 1024 * 1024)


def _report_stopped(task: asyncio.Task[None]) -> None:
    """A background loop that ends other than by cancellation is a bug: say so, loudly, once."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the %s stopped: %s", task.get_name(), error, exc_info=error)


def manifest_source(settings: GatewaySettings) -> ManifestSource:
    """The manifest source the settings name: a file, or registry aliases."""
    if settings.manifest is not None:
        return FileManifestSource(settings.manifest)
    if settings.tracking_uri is not None and settings.ensemble is not None:
        return RegistryManifestSource(settings.tracking_uri, settings.ensemble, settings.aliases)
    raise ManifestLoadError(
        "no ensemble to serve: give a manifest file or a tracking URI and an ensemble name"
    )


# --- REST ---------------------------------------------------------------------------------------
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
            self.metrics.requests.labels(PROTOCOL_REST, str(status_seen[0])).inc()
            self.metrics.request_latency.labels(PROTOCOL_REST).observe(time.perf_counter() - started)

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
            await _send_error(send, 413, f"request body exceeds the limit of {self.max_body} bytes")
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
                await _send_error(send, 413, f"request body exceeds the limit of {self.max_body} bytes")


def create_app(gateway: Gateway) -> FastAPI:
    """The gateway's FastAPI app: TF Serving's REST API for the ensemble, plus operations endpoints."""
    from serving.rest import create_tfs_router, install_error_handlers
    from serving.rest.oip import create_oip_router

    app = FastAPI(
        title="Ensemble gateway",
        description="TF Serving's API and the Open Inference Protocol in front of a Keras model ensemble.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(create_tfs_router(gateway.core, max_decoded_bytes=gateway.settings.max_decoded_bytes))
    app.include_router(create_oip_router(gateway.oip))

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(orjson.dumps({"status": "alive"}), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, reason = await gateway.check_ready()
        body = {"status": "ready" if ready else "not ready", "reason": reason}
        served = gateway.core.loaded
        if ready and served is not None:
            body["ensemble"] = served.name
            body["version"] = str(served_version(served.default))
        if gateway.from_last_good is not None:
            body["last_known_good"] = gateway.from_last_good.saved_at
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE)

    app.add_middleware(GuardMiddleware, settings=gateway.settings, metrics=gateway.metrics)  # type: ignore[arg-type]
    return app


# --- gRPC ---------------------------------------------------------------------------------------
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
                metrics.requests.labels(PROTOCOL_GRPC, name).inc()
                metrics.request_latency.labels(PROTOCOL_GRPC).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=tolerant_deserializer(decode) if decode is not None else None,
            response_serializer=handler.response_serializer,
        )


def create_grpc_server(gateway: Gateway) -> grpc.aio.Server:
    """The gateway's grpc.aio server: TF Serving's services, health and reflection (not started)."""
    from serving.grpc import add_health_and_reflection, add_tfs_servicers
    from serving.grpc.oip import add_oip_servicer

    settings = gateway.settings
    server = grpc.aio.server(
        interceptors=[GrpcGuard(settings, gateway.metrics)],
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", member_message_bytes(settings)),
        ],
    )
    add_tfs_servicers(server, gateway.core, max_decoded_bytes=settings.max_decoded_bytes)
    add_oip_servicer(server, gateway.oip)
    gateway.health = add_health_and_reflection(server, extra_services=(OIP_SERVICE,))
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise StartupError(f"cannot listen for gRPC on {address}")
    return server


# --- the process --------------------------------------------------------------------------------
def _bind_rest(settings: GatewaySettings) -> socket.socket:
    """The REST listening socket, bound here so a taken port is one clear error, not uvicorn's exit."""
    host, port = settings.rest_host, settings.rest_port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise StartupError(f"cannot listen for REST on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: FastAPI, settings: GatewaySettings) -> Any:
    from serving.rest.server import uvicorn_server

    return uvicorn_server(
        app,
        host=settings.rest_host,
        port=settings.rest_port,
        grace_s=settings.drain_timeout_s,
        log_level=settings.log_level,
    )


async def serve(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain and return."""
    gateway = await Gateway.open(settings)
    app = create_app(gateway)
    try:
        grpc_server = create_grpc_server(gateway)
    except StartupError:
        await gateway.close()
        raise
    rest_server = _uvicorn_server(app, settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        rest_socket = _bind_rest(settings)
    except StartupError:
        await gateway.close()
        raise
    await grpc_server.start()
    rest_task = asyncio.create_task(rest_server.serve(sockets=[rest_socket]))
    while not rest_server.started and not rest_task.done():
        await asyncio.sleep(0.01)
    if rest_task.done():
        await grpc_server.stop(grace=None)
        await gateway.close()
        rest_task.result()
        raise StartupError("the REST server stopped during startup")
    gateway.start_background()
    served = gateway.core.loaded
    listening = (
        f"REST {settings.rest_host}:{settings.rest_port} and gRPC {settings.grpc_host}:{settings.grpc_port}"
    )
    if served is None:
        log.warning(
            "listening on %s with no manifest yet: waiting for %s", listening, gateway.source.describe()
        )
    else:
        log.info(
            "serving ensemble %s v%s (%d members%s) on %s",
            served.name,
            served_version(served.default),
            len(served.default.members),
            ", last-known-good manifest" if gateway.from_last_good is not None else "",
            listening,
        )
    await stop.wait()

    log.info("draining: no new requests; waiting up to %.1fs for in-flight ones", settings.drain_timeout_s)
    gateway.draining = True
    await gateway.check_ready()
    rest_server.should_exit = True
    await asyncio.gather(grpc_server.stop(grace=settings.drain_timeout_s), rest_task, return_exceptions=True)
    await gateway.close()
    log.info("stopped")


def run(settings: GatewaySettings) -> None:
    """The ``ensemble serve`` entry: logging, uvloop, and :func:`serve`."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvloop is not available on every platform
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))
