"""A server process's life, written once for the gateway and the local backend.

:func:`serve_until_signalled` binds the ports (a port that is taken is one clear
:class:`StartupError`), starts gRPC and REST, hands over to the process's own work, and on SIGTERM
or SIGINT drains: the process stops saying it is ready, no new calls are accepted, and in-flight
ones finish (up to the grace period) before it closes. :class:`Background` runs a process's named
loops and says loudly when one of them dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from grpc import aio

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL (a no-op elsewhere).

    Called in a child before exec (``preexec_fn``: prctl only, safe between fork and exec) or first
    thing in a spawned worker, so no server outlives the process that started it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class StartupError(Exception):
    """The process cannot start (bad config, a port in use, ...); the message is one line for the user."""


class ServedProcess(Protocol):
    """What a process does at each stage of :func:`serve_until_signalled`."""

    def start(self) -> None:
        """The ports are open: start the background work and say where it listens."""
        ...

    async def drain(self) -> None:
        """SIGTERM came: stop reporting ready (health NOT_SERVING), before the servers stop."""
        ...

    async def close(self) -> None:
        """The servers stopped, or never started: release everything the process holds."""
        ...


@dataclass(frozen=True, slots=True)
class RestListener:
    """A REST server (``serving.rest.server.uvicorn_server``) and where it listens."""

    server: Any
    host: str
    port: int


def configure_logging(level: str | int) -> None:
    """One log format for both processes."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


async def serve_until_signalled(
    process: ServedProcess,
    grpc_server: aio.Server,
    grpc_address: str,
    rest: RestListener | None,
    *,
    grace_s: float,
    log: logging.Logger,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and close; StartupError when a port cannot be had.

    ``reuse_port`` binds REST with SO_REUSEPORT, so that several worker processes share its port
    (the gRPC server is given the matching channel option when it is built).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        _listen_grpc(grpc_server, grpc_address)
        rest_socket = _bind_rest(rest.host, rest.port, reuse_port) if rest is not None else None
        await grpc_server.start()
        rest_task = await _start_rest(rest, rest_socket, grpc_server)
        process.start()
        await stop.wait()

        log.info("draining: no new requests; waiting up to %.1fs for in-flight ones", grace_s)
        await process.drain()
        if rest is not None:
            rest.server.should_exit = True
        await asyncio.gather(
            grpc_server.stop(grace=grace_s), *([rest_task] if rest_task else []), return_exceptions=True
        )
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await process.close()
    log.info("stopped")


def _listen_grpc(server: aio.Server, address: str) -> None:
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise StartupError(f"cannot listen for gRPC on {address}")


def _bind_rest(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The REST listening socket, bound here so a taken port is one clear error, not uvicorn's exit."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # the kernel spreads new connections over the workers bound to this port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise StartupError(f"cannot listen for REST on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def _start_rest(
    rest: RestListener | None, sock: socket.socket | None, grpc_server: aio.Server
) -> asyncio.Task[None] | None:
    """The REST server running on ``sock``, once it has started; StartupError if it stopped instead."""
    if rest is None or sock is None:
        return None
    task = asyncio.create_task(rest.server.serve(sockets=[sock]), name="rest")
    while not rest.server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        await grpc_server.stop(grace=None)
        task.result()  # uvicorn's own error, when it raised one
        raise StartupError(f"the REST server on {rest.host}:{rest.port} stopped during startup")
    return task


class Background:
    """A process's named loops: started together, cancelled together, a death logged once."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, jobs: Mapping[str, Coroutine[Any, Any, None]]) -> None:
        for name, job in jobs.items():
            task = asyncio.create_task(job, name=name)
            task.add_done_callback(self._report_stopped)
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _report_stopped(self, task: asyncio.Task[None]) -> None:
        """A loop that ends other than by cancellation is a bug: say so, loudly, once."""
        if not task.cancelled() and (error := task.exception()) is not None:
            self._log.error("the %s stopped: %s", task.get_name(), error, exc_info=error)
