"""The gRPC servicers: convert TF Serving's messages, delegate to the core, map errors to status codes.

One decorator (:func:`_serving_errors`) turns a ServingError into its status code and message,
and anything unexpected into INTERNAL without a traceback reaching the client. The client's
deadline is passed on as ``timeout_s``; invocation metadata as ``request_headers``; a result's
``headers`` come back as trailing metadata.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc import aio

from contracts.errors import one_line
from serving.core import ModelRef, ServingCore
from serving.errors import InvalidArgument, ServingError, Unimplemented
from serving.protos import (
    ErrorCode,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelServiceServicer,
    ModelSpec,
    ModelVersionStatus,
    PredictionServiceServicer,
    PredictRequest,
    PredictResponse,
    ReloadConfigRequest,
    ReloadConfigResponse,
    add_ModelServiceServicer_to_server,
    add_PredictionServiceServicer_to_server,
)
from serving.tensors import decode_inputs, to_tensor_proto

if TYPE_CHECKING:
    from grpc_health.v1._async import HealthServicer

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Method = Callable[[Any, _Request, aio.ServicerContext], Awaitable[_Response]]


def _serving_errors(method: _Method[_Request, _Response]) -> _Method[_Request, _Response]:
    """Answer a ServingError with its status code and message; anything else with INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: _Request, context: aio.ServicerContext) -> _Response:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        except aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {exc.__class__.__name__}")
        raise AssertionError("context.abort returned")  # abort always raises

    return wrapper


class Undecodable:
    """Stands in for a request whose bytes are not a valid message, so it can be refused properly."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant_deserializer(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, answering :class:`Undecodable` instead of raising (grpc would say UNKNOWN)."""

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:
            return Undecodable(one_line(exc))

    return deserialize


async def refuse_undecodable(request: Any, context: aio.ServicerContext) -> None:
    """Abort with INVALID_ARGUMENT when ``request`` came from :func:`tolerant_deserializer` failing."""
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Failed to parse request: {request.error}")


class DecodeGuard(aio.ServerInterceptor):  # type: ignore[misc]
    """Bytes that are not a valid request message are INVALID_ARGUMENT, for every unary method."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        inner = handler.unary_unary

        async def behaviour(request: Any, context: aio.ServicerContext) -> Any:
            await refuse_undecodable(request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def model_ref(spec: ModelSpec) -> ModelRef:
    """TF Serving's ModelSpec as the core's ModelRef."""
    if not spec.name:
        raise InvalidArgument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label" and not spec.version_label:
        # Set but empty is still a label to look up (TF Serving finds none), not "no version".
        raise InvalidArgument("Unrecognized servable version label: (empty)")
    return ModelRef(
        name=spec.name,
        version=int(spec.version.value) if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


def _headers(context: aio.ServicerContext) -> dict[str, str]:
    return {
        str(key).lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


def _timeout(context: aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, float(remaining))


class PredictionServicer(PredictionServiceServicer):  # type: ignore[misc]
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata.

    ``max_decoded_bytes`` bounds what one request's input tensors may decode to (None: no bound).
    """

    def __init__(self, core: ServingCore, max_decoded_bytes: int | None = None) -> None:
        self.core = core
        self.max_decoded_bytes = max_decoded_bytes

    @_serving_errors
    async def Predict(self, request: PredictRequest, context: aio.ServicerContext) -> PredictResponse:
        ref = model_ref(request.model_spec)
        # The signature first, as REST does: dtypes and sizes are checked before decoding.
        inputs = decode_inputs(request.inputs, self.core.input_signature(ref), self.max_decoded_bytes)
        result = await self.core.predict(
            ref,
            inputs,
            output_filter=list(request.output_filter),
            timeout_s=_timeout(context),
            request_headers=_headers(context),
        )
        response = PredictResponse()
        response.model_spec.name = result.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for name, array in result.outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(array))
        if result.headers:
            context.set_trailing_metadata(
                tuple((key.lower(), value) for key, value in result.headers.items())
            )
        return response

    @_serving_errors
    async def GetModelMetadata(
        self, request: GetModelMetadataRequest, context: aio.ServicerContext
    ) -> GetModelMetadataResponse:
        ref = model_ref(request.model_spec)
        if not request.metadata_field:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        answer = await self.core.metadata(ref)
        response = GetModelMetadataResponse()
        response.model_spec.name = answer.name
        response.model_spec.version.value = answer.version
        response.metadata["signature_def"].Pack(answer.signature_def)
        return response


class ModelServicer(ModelServiceServicer):  # type: ignore[misc]
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    @_serving_errors
    async def GetModelStatus(
        self, request: GetModelStatusRequest, context: aio.ServicerContext
    ) -> GetModelStatusResponse:
        ref = model_ref(request.model_spec)
        response = GetModelStatusResponse()
        for status in await self.core.status(ref):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = ErrorCode.Value(status.error_code)
            entry.status.error_message = status.error_message
        return response

    @_serving_errors
    async def HandleReloadConfigRequest(
        self, request: ReloadConfigRequest, context: aio.ServicerContext
    ) -> ReloadConfigResponse:
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported here: the served models follow the model config file"
        )


def add_tfs_servicers(server: aio.Server, core: ServingCore, *, max_decoded_bytes: int | None = None) -> None:
    """Serve TF Serving's PredictionService and ModelService on ``server`` from ``core``."""
    add_PredictionServiceServicer_to_server(PredictionServicer(core, max_decoded_bytes), server)
    add_ModelServiceServicer_to_server(ModelServicer(core), server)


def add_health_and_reflection(
    server: aio.Server,
    health: HealthServicer | None = None,
    services: Sequence[str] = (PREDICTION_SERVICE, MODEL_SERVICE),
) -> HealthServicer:
    """Add ``grpc.health.v1.Health`` (``health``, or a new one) and reflection listing ``services``.

    The health servicer is returned so the caller sets statuses. Our descriptors live in a private
    pool, so clients that need the schemas use the published protos.
    """
    from grpc_health.v1 import health as grpc_health
    from grpc_health.v1 import health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    servicer = health if health is not None else grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (*services, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return servicer
