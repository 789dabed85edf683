"""The gateway process: REST and gRPC on one event loop, around one :class:`Gateway`.

``create_app`` builds the FastAPI app (TF Serving's REST API and the Open Inference Protocol from
the shared adapters, plus ``/healthz``, ``/readyz`` and ``/metrics``, behind
``serving.rest.guard``); ``create_grpc_server`` builds the grpc.aio server (the shared services,
health and reflection, behind ``serving.grpc.guard``). ``run`` starts both on uvloop and watches
the manifest source; on SIGTERM it stops accepting, lets in-flight requests finish (up to
``drain_timeout_s``) and exits (``serving.lifecycle``). With ``workers`` above 1, ``run`` hands
over to ``serving.workers``, whose worker processes each run :func:`serve` on the shared ports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from serving.gateway import Gateway, member_message_bytes
from serving.grpc.guard import GrpcGuard
from serving.grpc.server import create_server
from serving.lifecycle import RestListener, configure_logging, serve_until_signalled
from serving.manifest_source import served_version
from serving.metrics import CONTENT_TYPE
from serving.rest.guard import GuardMiddleware
from serving.settings import GatewaySettings

log = logging.getLogger("serving.gateway")


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

    @app.get("/v1/ensembles/{name}/comparison")
    async def comparison(name: str) -> Response:
        # NotFound (one line, 404) for an ensemble without a traffic policy.
        summary = gateway.traffic.summary(name)
        return Response(summary.model_dump_json(), media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE)

    app.add_middleware(GuardMiddleware, settings=gateway.settings, metrics=gateway.metrics)  # type: ignore[arg-type]
    return app


def create_grpc_server(gateway: Gateway) -> grpc.aio.Server:
    """The gateway's grpc.aio server: TF Serving's services, health and reflection (not bound)."""
    settings = gateway.settings
    return create_server(
        gateway.core,
        gateway.oip,
        gateway.health,
        interceptor=GrpcGuard(settings, gateway.metrics),
        max_receive_bytes=settings.max_body_bytes,
        max_send_bytes=member_message_bytes(settings),
        max_decoded_bytes=settings.max_decoded_bytes,
        reuse_port=settings.workers > 1,
    )


class _GatewayProcess:
    """The gateway's part in ``serving.lifecycle``: watch once listening, drain, close."""

    def __init__(self, gateway: Gateway, on_serving: Callable[[], None] | None) -> None:
        self.gateway = gateway
        self._on_serving = on_serving

    def start(self) -> None:
        gateway, settings = self.gateway, self.gateway.settings
        gateway.start_background()
        if self._on_serving is not None:
            self._on_serving()
        served = gateway.core.loaded
        rest_at = f"{settings.rest_host}:{settings.rest_port}"
        listening = f"REST {rest_at} and gRPC {settings.grpc_host}:{settings.grpc_port}"
        if served is None:
            log.warning(
                "listening on %s with no manifest yet: waiting for %s", listening, gateway.source.describe()
            )
            return
        log.info(
            "serving ensemble %s v%s (%d members%s) on %s",
            served.name,
            served_version(served.default),
            len(served.default.members),
            ", last-known-good manifest" if gateway.from_last_good is not None else "",
            listening,
        )

    async def drain(self) -> None:
        self.gateway.draining = True
        await self.gateway.check_ready()

    async def close(self) -> None:
        await self.gateway.close()


async def serve(settings: GatewaySettings, on_serving: Callable[[], None] | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain and return.

    ``on_serving`` is called once both ports listen (a worker tells its supervisor so).
    """
    from serving.rest.server import uvicorn_server

    gateway = await Gateway.open(settings)
    rest = uvicorn_server(
        create_app(gateway),
        host=settings.rest_host,
        port=settings.rest_port,
        grace_s=settings.drain_timeout_s,
        log_level=settings.log_level,
    )
    await serve_until_signalled(
        _GatewayProcess(gateway, on_serving),
        create_grpc_server(gateway),
        f"{settings.grpc_host}:{settings.grpc_port}",
        RestListener(rest, settings.rest_host, settings.rest_port),
        grace_s=settings.drain_timeout_s,
        log=log,
        reuse_port=settings.workers > 1,
    )


def run(settings: GatewaySettings) -> None:
    """The ``ensemble serve`` entry: logging, uvloop, and :func:`serve` (or the workers' supervisor)."""
    configure_logging(settings.log_level.upper())
    if settings.workers > 1:
        from serving.workers import supervise

        supervise(settings)
        return
    run_loop(serve(settings))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvloop is not available on every platform
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)
