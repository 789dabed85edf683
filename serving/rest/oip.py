"""The Open Inference Protocol's REST routes (``/v2/...``) as a thin FastAPI adapter.

``create_oip_router(service)`` serves health, server and model metadata, model readiness and
inference; the bodies are converted by ``serving.oip.rest_body`` and every operation is the
shared ``serving.oip.service.OipService``. Errors are ``{"error": "..."}`` with the status code of
the core's error (the handlers of ``serving.rest.handlers``): 400 for a bad request, 404 for an
unknown model, version or label, 503 when the ensemble cannot answer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from serving.errors import Unavailable
from serving.oip.rest_body import HEADER_LENGTH, format_infer_response, parse_infer_request
from serving.oip.service import OipService
from serving.rest.handlers import JSON

_BINARY = "application/octet-stream"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def create_oip_router(service: OipService, *, timeout_s: float | None = None) -> APIRouter:
    """The ``/v2`` routes on ``service``; ``timeout_s`` bounds each inference, None for no bound."""
    router = APIRouter()

    async def live() -> Response:
        return _json({"live": True})

    async def ready() -> Response:
        is_ready, reason = await service.server_ready()
        if is_ready:
            return _json({"ready": True})
        return _json({"ready": False, "error": reason}, status=503)

    async def server_metadata() -> Response:
        answer = service.server_metadata()
        return _json({"name": answer.name, "version": answer.version, "extensions": answer.extensions})

    async def model_metadata(name: str, version: str = "") -> Response:
        return _json(asdict(await service.model_metadata(name, version)))

    async def model_ready(name: str, version: str = "") -> Response:
        is_ready, reason = await service.model_ready(name, version)
        if not is_ready:
            raise Unavailable(reason)
        return _json({"name": name, "ready": True})

    async def infer(request: Request, name: str, version: str = "") -> Response:
        parsed = parse_infer_request(
            await request.body(),
            request.headers.get(HEADER_LENGTH),
            model_name=name,
            model_version=version,
            max_decoded_bytes=service.max_decoded_bytes,
        )
        headers = {key.lower(): value for key, value in request.headers.items()}
        answer = await service.infer(parsed.request, timeout_s=timeout_s, request_headers=headers)
        body, json_length = format_infer_response(answer, parsed)
        response_headers = dict(answer.headers)
        if json_length is None:
            return Response(body, media_type=JSON, headers=response_headers)
        response_headers[HEADER_LENGTH] = str(json_length)
        return Response(body, media_type=_BINARY, headers=response_headers)

    def add(path: str, endpoint: Any, method: str) -> None:
        router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)

    add("/v2", server_metadata, "GET")
    add("/v2/health/live", live, "GET")
    add("/v2/health/ready", ready, "GET")
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add(model, model_metadata, "GET")
        add(f"{model}/ready", model_ready, "GET")
        add(f"{model}/infer", infer, "POST")
    return router
