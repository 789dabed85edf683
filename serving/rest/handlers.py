"""The REST error handler: every failure becomes ``{"error": "..."}`` with TF Serving's HTTP status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from serving.errors import ServingError, rest_error_body

log = logging.getLogger(__name__)

JSON = "application/json"


def error_response(status: int, message: str) -> Response:
    """TF Serving's error answer."""
    return Response(rest_error_body(message), status_code=status, media_type=JSON)


def install_error_handlers(app: FastAPI) -> None:
    """Map ServingError, routing errors and unexpected failures onto TF Serving's error body."""

    async def serving_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(exc.http_status, exc.message)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def validation_error(_: Request, exc: Exception) -> Response:
        return error_response(400, f"Malformed request: {exc}")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error: {exc.__class__.__name__}")

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
