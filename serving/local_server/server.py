"""The ``ensemble backend`` process: load the models, then serve gRPC (and REST) until SIGTERM.

The ports open once every initial version has loaded or failed its first try (TF Serving waits
through every retry, minutes by default, and then exits). gRPC health says SERVING only while
every model of the config has an AVAILABLE version, so it follows loads, fallbacks and failures.
On SIGTERM or SIGINT the health service turns NOT_SERVING, no new calls are accepted, and
in-flight requests finish (up to ``shutdown_grace_s``) before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grpc import aio

from contracts.model_config import ModelConfigError, ModelEntry
from serving.grpc.oip import OIP_SERVICE
from serving.local_server.core import PLATFORM, LocalCore
from serving.local_server.faults import FaultConfig, FaultInjector
from serving.local_server.manager import LoadRetries, ModelManager
from serving.local_server.settings import BackendSettings
from serving.oip.service import OipService

log = logging.getLogger("serving.local_server")


class StartupError(Exception):
    """The backend cannot start: bad config, a port in use … (a one-line message)."""


def _oip_service(core: LocalCore) -> OipService:
    return OipService(core, server_name="tf-ensemble local backend", platform=PLATFORM, ready=core.ready)


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
    app.include_router(create_oip_router(_oip_service(core), timeout_s=timeout_s))

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


async def serve(settings: BackendSettings) -> None:
    """Run the backend until SIGTERM/SIGINT; StartupError when it cannot start."""
    from serving.grpc import DecodeGuard, add_health_and_reflection, add_tfs_servicers
    from serving.grpc.oip import add_oip_servicer
    from serving.local_server.saved_model import configure_devices

    faults = None
    if settings.fault_config is not None:
        try:
            faults = FaultInjector(FaultConfig.from_file(settings.fault_config))
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        log.warning("fault injection is ON (%s): this is a testing aid", settings.fault_config)

    gpus = await asyncio.to_thread(configure_devices)
    log.info("TensorFlow devices: %s", ", ".join(gpus) if gpus else "CPU only")
    load_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="load")
    model_executor = ThreadPoolExecutor(max_workers=settings.model_threads, thread_name_prefix="model")
    manager = _manager(settings, load_executor)
    try:
        manager.read_config()
    except ModelConfigError as exc:
        raise StartupError(str(exc)) from None
    await manager.reconcile()
    await manager.wait_for_first_tries()
    core = LocalCore(manager, model_executor, faults)

    server = aio.server(
        interceptors=[DecodeGuard()],
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    add_tfs_servicers(server, core, max_decoded_bytes=settings.grpc_max_message_bytes)
    add_oip_servicer(server, _oip_service(core))
    health = add_health_and_reflection(server, extra_services=(OIP_SERVICE,))
    try:
        bound = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise StartupError(f"cannot listen for gRPC on {settings.host}:{settings.port}")
    await server.start()
    health_task = asyncio.create_task(_track_health(manager, health), name="health")

    rest = _rest_server(core, settings) if settings.rest_api_port else None
    rest_task = asyncio.create_task(rest.serve(), name="rest") if rest is not None else None
    if rest is not None and rest_task is not None:
        while not rest.started and not rest_task.done():
            await asyncio.sleep(0.02)
        if rest_task.done():
            await server.stop(None)
            raise StartupError(f"cannot listen for REST on {settings.host}:{settings.rest_api_port}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    poll_task = asyncio.create_task(
        manager.poll(settings.model_config_file_poll_wait_seconds, settings.file_system_poll_wait_seconds),
        name="poll",
    )
    log.info(
        "serving %s: gRPC on %s:%d%s",
        ", ".join(sorted(manager.models)) or "no models",
        settings.host,
        settings.port,
        f", REST on {settings.host}:{settings.rest_api_port}" if rest else " (REST off: --rest_api_port=0)",
    )
    await stop.wait()

    log.info("shutting down: finishing in-flight requests")
    health_task.cancel()
    await health.enter_graceful_shutdown()
    poll_task.cancel()
    if rest is not None and rest_task is not None:
        rest.should_exit = True
    await server.stop(settings.shutdown_grace_s)
    if rest_task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await rest_task
    manager.close()
    model_executor.shutdown(wait=True, cancel_futures=True)
    load_executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")


_HEALTH_SERVICES = (
    "",
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    OIP_SERVICE,
)


async def _track_health(manager: ModelManager, health: Any, interval_s: float = 0.25) -> None:
    """Keep gRPC health on what can be served: SERVING while every model has a version available."""
    from grpc_health.v1 import health_pb2

    serving: bool | None = None
    while True:
        problems = manager.unservable()
        if (not problems) != serving:
            serving = not problems
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in _HEALTH_SERVICES:
                await health.set(service, status)
            if serving:
                log.info("health: SERVING (every model has a version available)")
            else:
                for name, why in sorted(problems.items()):
                    log.warning("health: NOT_SERVING: %s has no version available: %s", name, why)
        await asyncio.sleep(interval_s)


def run(settings: BackendSettings) -> int:
    """The process entry: configure logging, serve, and return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0


def settings_from_flags(**flags: Any) -> BackendSettings:
    """BackendSettings from the CLI's flags, paths made absolute (the process may change directory)."""
    for key in ("model_config_file", "model_base_path", "fault_config"):
        if flags.get(key) is not None:
            flags[key] = Path(flags[key]).expanduser().resolve()
    return BackendSettings(**{key: value for key, value in flags.items() if value is not None})
