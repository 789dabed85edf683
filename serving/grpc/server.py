"""The gRPC server both processes run: TF Serving's services, the Open Inference Protocol, health.

The gateway and the local backend serve the same services (named once, in :data:`SERVICES`) and
report the same health for each: :func:`create_server` builds the server (not bound, not started;
``serving.lifecycle`` does both) and :func:`set_serving` turns every service's health at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpc import aio

from serving.core import ServingCore
from serving.grpc.oip import OIP_SERVICE, add_oip_servicer
from serving.grpc.servicers import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    add_health_and_reflection,
    add_tfs_servicers,
)
from serving.oip.service import OipService

if TYPE_CHECKING:
    from grpc_health.v1._async import HealthServicer

SERVICES = (PREDICTION_SERVICE, MODEL_SERVICE, OIP_SERVICE)
"""The services a server answers predictions on: listed by reflection, each with its own health."""


def create_server(
    core: ServingCore,
    oip: OipService,
    health: HealthServicer,
    *,
    interceptor: aio.ServerInterceptor,
    max_receive_bytes: int,
    max_send_bytes: int,
    max_decoded_bytes: int,
    reuse_port: bool = False,
) -> aio.Server:
    """A grpc.aio server with every service of :data:`SERVICES` on ``core``, health and reflection.

    ``reuse_port`` lets several worker processes bind the same port (SO_REUSEPORT).
    """
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
    ]
    if reuse_port:
        options.append(("grpc.so_reuseport", 1))
    server = aio.server(interceptors=[interceptor], options=options)
    add_tfs_servicers(server, core, max_decoded_bytes=max_decoded_bytes)
    add_oip_servicer(server, oip)
    add_health_and_reflection(server, health, SERVICES)
    return server


async def set_serving(health: HealthServicer, serving: bool) -> None:
    """The overall health and every service's: SERVING or NOT_SERVING."""
    from grpc_health.v1 import health_pb2

    status: Any = (
        health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", *SERVICES):
        await health.set(service, status)
