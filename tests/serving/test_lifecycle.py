"""The process lifecycle both servers share: ports, start, SIGTERM, drain, close, in that order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import grpc
import httpx
import pytest
from fastapi import FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.grpc.servicers import add_health_and_reflection
from serving.lifecycle import RestListener, StartupError, serve_until_signalled
from serving.rest.server import uvicorn_server
from serving.testing import free_port

log = logging.getLogger("tests.lifecycle")


class Recording:
    """A process that records each stage it is asked through, and what answered meanwhile."""

    def __init__(self, rest_port: int | None, grpc_port: int) -> None:
        self.stages: list[str] = []
        self.rest_port = rest_port
        self.grpc_port = grpc_port

    def start(self) -> None:
        self.stages.append("start")
        asyncio.get_running_loop().create_task(self._probe_then_stop())

    async def _probe_then_stop(self) -> None:
        # Both ports answer once start() is called; then SIGTERM, as an orchestrator sends it.
        if self.rest_port is not None:
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{self.rest_port}/ping")
            self.stages.append(f"rest {answer.status_code}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        self.stages.append(f"grpc {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        os.kill(os.getpid(), signal.SIGTERM)

    async def drain(self) -> None:
        self.stages.append("drain")

    async def close(self) -> None:
        self.stages.append("close")


def _servers(rest_port: int | None) -> tuple[grpc.aio.Server, RestListener | None]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    add_health_and_reflection(server, servicer)
    if rest_port is None:
        return server, None
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return server, RestListener(
        uvicorn_server(app, host="127.0.0.1", port=rest_port, grace_s=1), "127.0.0.1", rest_port
    )


@pytest.mark.parametrize("with_rest", [True, False], ids=["grpc and rest", "grpc only"])
def test_start_then_sigterm_drains_and_closes_in_order(
    with_rest: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rest_port, grpc_port = (free_port() if with_rest else None), free_port()
    process = Recording(rest_port, grpc_port)

    async def scenario() -> None:
        server, rest = _servers(rest_port)
        await serve_until_signalled(process, server, f"127.0.0.1:{grpc_port}", rest, grace_s=1, log=log)

    with caplog.at_level("INFO", logger="tests.lifecycle"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    answered = ["rest 200"] if with_rest else []
    assert process.stages == ["start", *answered, "grpc SERVING", "drain", "close"]
    assert [r.getMessage() for r in caplog.records if r.name == "tests.lifecycle"] == [
        "draining: no new requests; waiting up to 1.0s for in-flight ones",
        "stopped",
    ]
    # The ports are free again: the process let go of both.
    for port in filter(None, (rest_port, grpc_port)):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("taken", ["grpc", "rest"])
def test_a_taken_port_is_one_line_and_the_process_still_closes(taken: str) -> None:
    rest_port, grpc_port = free_port(), free_port()
    process = Recording(rest_port, grpc_port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", grpc_port if taken == "grpc" else rest_port))
        holder.listen()

        async def scenario() -> None:
            server, rest = _servers(rest_port)
            await serve_until_signalled(process, server, f"127.0.0.1:{grpc_port}", rest, grace_s=1, log=log)

        with pytest.raises(StartupError) as info:
            asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    expected = (
        f"cannot listen for gRPC on 127.0.0.1:{grpc_port}"
        if taken == "grpc"
        else f"cannot listen for REST on 127.0.0.1:{rest_port}: Address already in use"
    )
    assert str(info.value) == expected
    assert process.stages == ["close"]
