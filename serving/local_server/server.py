"""The ``ensemble backend`` process: load the models, then serve gRPC (and REST) until SIGTERM.

The ports open once every initial version has loaded or failed its first try (TF Serving waits
through every retry, minutes by default, and then exits). gRPC health says SERVING only while
every model of the config has an AVAILABLE version, so it follows loads, fallbacks and failures.
On SIGTERM or SIGINT the health service turns NOT_SERVING, no new calls are accepted, and
in-flight requests finish (up to ``shutdown_grace_s``) before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health

from contracts.model_config import ModelConfigError, ModelEntry
from serving.grpc.server import create_server, set_serving
from serving.lifecycle import Background, RestListener, StartupError, configure_logging, serve_until_signalled
from serving.local_server.core import PLATFORM, LocalCore
from serving.local_server.faults import FaultConfig, FaultInjector
from serving.local_server.manager import LoadRetries, ModelManager
from serving.local_server.settings import BackendSettings
from serving.oip.service import OipService

if TYPE_CHECKING:
    from grpc_health.v1._async import HealthServicer

log = logging.getLogger("serving.local_server")


def _oip_service(core: LocalCore, settings: BackendSettings) -> OipService:
    # The same bound as TF Serving's routes on this backend: what one gRPC message may carry.
    return OipService(
        core,
        server_name="tf-ensemble local backend",
        platform=PLATFORM,
        ready=core.ready,
        max_decoded_bytes=settings.grpc_max_message_bytes,
    )


def _rest_server(core: LocalCore, settings: BackendSettings) -> Any:
    from fastapi import FastAPI

    from serving.rest import create_tfs_router, install_error_handlers
    from serving.rest.oip import create_oip_router
    from serving.rest.server import uvicorn_server

    app = FastAPI(title="Local model server", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    timeout_s = settings.rest_api_timeout_in_ms / 1000 if settings.rest_api_timeout_in_ms else None
    # No request decodes to more than the largest message this server takes (TF Serving has no
    # such bound; it allocates whatever a shape declares).
    app.include_router(
        create_tfs_router(core, timeout_s=timeout_s, max_decoded_bytes=settings.grpc_max_message_bytes)
    )
    app.include_router(create_oip_router(_oip_service(core, settings), timeout_s=timeout_s))

    return uvicorn_server(
        app, host=settings.host, port=settings.rest_api_port, grace_s=settings.shutdown_grace_s
    )


def _manager(settings: BackendSettings, load_executor: ThreadPoolExecutor) -> ModelManager:
    from serving.local_server.saved_model import load_servable

    retries = LoadRetries(
        max_retries=settings.max_num_load_retries,
        interval_s=max(settings.load_retry_interval_micros, 0) / 1e6,
    )
    if settings.model_config_file is not None:
        return ModelManager(
            load_servable, load_executor, config_file=settings.model_config_file.resolve(), retries=retries
        )
    assert settings.model_base_path is not None
    entry = ModelEntry(name=settings.model_name, base_path=str(settings.model_base_path.resolve()))
    return ModelManager(load_servable, load_executor, single_model=entry, retries=retries)


class _Backend:
    """The backend's part in ``serving.lifecycle``: models, executors, health and the poll loop."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.load_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="load")
        self.model_executor = ThreadPoolExecutor(
            max_workers=settings.model_threads, thread_name_prefix="model"
        )
        self.manager = _manager(settings, self.load_executor)
        self.health = health.aio.HealthServicer()
        self.background = Background(log)

    async def load(self) -> None:
        """Read the config and give every initial version its first try; StartupError on a bad config."""
        try:
            self.manager.read_config()
        except ModelConfigError as exc:
            raise StartupError(str(exc)) from None
        await self.manager.reconcile()
        await self.manager.wait_for_first_tries()

    def start(self) -> None:
        settings, manager = self.settings, self.manager
        self.background.start(
            {
                "health tracker": _track_health(manager, self.health),
                "model poll": manager.poll(
                    settings.model_config_file_poll_wait_seconds, settings.file_system_poll_wait_seconds
                ),
            }
        )
        rest = settings.rest_api_port
        log.info(
            "serving %s: gRPC on %s:%d%s",
            ", ".join(sorted(manager.models)) or "no models",
            settings.host,
            settings.port,
            f", REST on {settings.host}:{rest}" if rest else " (REST off: --rest_api_port=0)",
        )

    async def drain(self) -> None:
        # The tracker stops first, so nothing turns health back to SERVING while draining.
        await self.background.stop()
        await self.health.enter_graceful_shutdown()

    async def close(self) -> None:
        await self.background.stop()
        self.manager.close()
        self.model_executor.shutdown(wait=True, cancel_futures=True)
        self.load_executor.shutdown(wait=False, cancel_futures=True)


def _faults(settings: BackendSettings) -> FaultInjector | None:
    if settings.fault_config is None:
        return None
    try:
        faults = FaultInjector(FaultConfig.from_file(settings.fault_config))
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    log.warning("fault injection is ON (%s): this is a testing aid", settings.fault_config)
    return faults


async def serve(settings: BackendSettings) -> None:
    """Run the backend until SIGTERM/SIGINT; StartupError when it cannot start."""
    from serving.grpc import DecodeGuard
    from serving.local_server.saved_model import configure_devices

    faults = _faults(settings)
    gpus = await asyncio.to_thread(configure_devices)
    log.info("TensorFlow devices: %s", ", ".join(gpus) if gpus else "CPU only")
    backend = _Backend(settings)
    try:
        await backend.load()
    except BaseException:
        await backend.close()
        raise
    core = LocalCore(backend.manager, backend.model_executor, faults)
    limit = settings.grpc_max_message_bytes
    grpc_server = create_server(
        core,
        _oip_service(core, settings),
        backend.health,
        interceptor=DecodeGuard(),
        max_receive_bytes=limit,
        max_send_bytes=limit,
        max_decoded_bytes=limit,
    )
    rest = (
        RestListener(_rest_server(core, settings), settings.host, settings.rest_api_port)
        if settings.rest_api_port
        else None
    )
    await serve_until_signalled(
        backend,
        grpc_server,
        f"{settings.host}:{settings.port}",
        rest,
        grace_s=settings.shutdown_grace_s,
        log=log,
    )


async def _track_health(manager: ModelManager, health: HealthServicer, interval_s: float = 0.25) -> None:
    """Keep gRPC health on what can be served: SERVING while every model has a version available."""
    serving: bool | None = None
    while True:
        problems = manager.unservable()
        if (not problems) != serving:
            serving = not problems
            await set_serving(health, serving)
            if serving:
                log.info("health: SERVING (every model has a version available)")
            else:
                for name, why in sorted(problems.items()):
                    log.warning("health: NOT_SERVING: %s has no version available: %s", name, why)
        await asyncio.sleep(interval_s)


def run(settings: BackendSettings) -> int:
    """The process entry: configure logging, serve, and return the exit status."""
    configure_logging(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0
