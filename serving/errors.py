"""Serving errors: one base class carrying a gRPC status code, and its REST mapping.

Everything below the adapters raises a :class:`ServingError` subclass; the REST adapter turns it
into TF Serving's ``{"error": "..."}`` body with :func:`http_status`, the gRPC adapter into the
status code and details. The message is the one-line text a client sees.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
import orjson


class ServingError(Exception):
    """An error with the gRPC status code a client receives."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        message = _encodable(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            # An instance may carry another code than its class, e.g. one relayed from a backend.
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        return http_status(self.code)


class Cancelled(ServingError):
    code = grpc.StatusCode.CANCELLED


class Unknown(ServingError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServingError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(ServingError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ServingError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServingError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}

_BY_CODE: dict[grpc.StatusCode, type[ServingError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def _encodable(message: str) -> str:
    """``message`` with anything UTF-8 cannot carry (a lone surrogate from a request) escaped.

    Messages quote what the client sent; one that cannot be encoded would turn a 400 into a failure
    to write the error itself.
    """
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        return message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers for a gRPC status code (500 for the rest)."""
    return _HTTP_STATUS.get(code, 500)


def from_status_code(code: grpc.StatusCode, message: str) -> ServingError:
    """The :class:`ServingError` subclass for ``code``, e.g. to relay a backend's gRPC error."""
    return _BY_CODE.get(code, ServingError)(message, code=code)


def rest_error_body(message: str) -> bytes:
    """TF Serving's REST error body, ``{"error": "<message>"}``, as JSON bytes."""
    return orjson.dumps({"error": message})
