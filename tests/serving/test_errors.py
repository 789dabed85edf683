"""Serving errors: status codes, TF Serving's HTTP mapping and error body."""

from __future__ import annotations

import grpc
import orjson
import pytest

from serving import errors


@pytest.mark.parametrize(
    ("cls", "code", "http"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 400),
        (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE, 400),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND, 404),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
        (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED, 501),
        (errors.Cancelled, grpc.StatusCode.CANCELLED, 499),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409),
        (errors.Aborted, grpc.StatusCode.ABORTED, 409),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
        (errors.Internal, grpc.StatusCode.INTERNAL, 500),
        (errors.Unknown, grpc.StatusCode.UNKNOWN, 500),
        (errors.DataLoss, grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_each_error_carries_its_code_and_http_status(cls, code, http) -> None:
    error = cls("something went wrong")
    assert isinstance(error, errors.ServingError)
    assert error.code == code
    assert error.http_status == http
    assert str(error) == "something went wrong"
    relayed = errors.from_status_code(code, "relayed")
    assert type(relayed) is cls
    assert relayed.code == code


def test_an_instance_may_carry_another_code() -> None:
    error = errors.ServingError("backend said no", code=grpc.StatusCode.UNAVAILABLE)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.http_status == 503
    assert errors.ServingError.code == grpc.StatusCode.INTERNAL


def test_rest_error_body() -> None:
    assert orjson.loads(errors.rest_error_body('bad "value"')) == {"error": 'bad "value"'}


def test_a_message_quoting_what_utf8_cannot_carry_is_still_written() -> None:
    # A lone surrogate from a request must not turn a 400 into a failure to write the error.
    error = errors.InvalidArgument('Serving signature name: "\ud800" not found')
    assert error.message == 'Serving signature name: "\\ud800" not found'
    assert orjson.loads(errors.rest_error_body(error.message)) == {"error": error.message}
    assert errors.InvalidArgument("plain").message == "plain"
