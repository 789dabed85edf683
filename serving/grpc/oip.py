"""``inference.GRPCInferenceService``, the Open Inference Protocol over gRPC, as a thin servicer.

It converts the protocol's messages and delegates to ``serving.oip.service.OipService``, with the
same error decorator, deadline and metadata handling as TF Serving's servicers. Input values come
as ``raw_input_contents`` (what tritonclient and the KServe SDK send for numpy data) or in the
typed field of ``contents`` that matches the datatype; outputs always go back as
``raw_output_contents``, as Triton answers, which both clients read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from grpc import aio

from serving.errors import InvalidArgument
from serving.grpc.servicers import _headers, _serving_errors, _timeout
from serving.oip import codec
from serving.oip.datatypes import numpy_dtype_of
from serving.oip.service import InferRequest, InputTensor, OipService, ParameterValue
from serving.protos.inference.open_inference_grpc_pb2 import (
    DESCRIPTOR,
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from serving.protos.inference.open_inference_grpc_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)

OIP_SERVICE: Final[str] = DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""``inference.GRPCInferenceService``, for health and reflection."""

# The typed field of InferTensorContents that carries each datatype (FP16 travels only raw).
_CONTENTS_FIELD: Final = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS: Final = tuple(field.name for field in InferTensorContents.DESCRIPTOR.fields)


def _parameters(parameters: Mapping[str, InferParameter]) -> dict[str, ParameterValue]:
    values: dict[str, ParameterValue] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _typed_values(name: str, datatype: str, contents: InferTensorContents) -> Sequence[Any]:
    numpy_dtype_of(datatype, name)  # an unknown datatype is named as such, not as misplaced values
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {name!r}: {datatype} values travel only in raw_input_contents")
    misplaced = [other for other in _ALL_FIELDS if other != field and len(getattr(contents, other))]
    if misplaced:
        raise InvalidArgument(
            f"input {name!r} of datatype {datatype} has values in {', '.join(misplaced)}; "
            f"they belong in {field}"
        )
    values: Sequence[Any] = getattr(contents, field)
    return values


def infer_request(request: ModelInferRequest, max_decoded_bytes: int | None = None) -> InferRequest:
    """The protocol-neutral request of a ModelInferRequest; InvalidArgument for malformed tensors.

    ``max_decoded_bytes`` bounds what the input tensors decode to together, checked from each
    tensor's declared shape and datatype before its values are read.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give every input's values there, or none"
        )
    inputs: list[InputTensor] = []
    budget = codec.decode_budget(max_decoded_bytes)
    for index, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        shape = codec.checked_shape(name, list(tensor.shape))
        codec.charge(budget, name, datatype, shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"input {name!r} has both contents and raw_input_contents")
            values = codec.from_raw(name, datatype, shape, raw[index])
        else:
            values = codec.from_values(name, datatype, shape, _typed_values(name, datatype, tensor.contents))
        inputs.append(InputTensor(name, datatype, values))
    for output in request.outputs:
        if "classification" in output.parameters:
            raise InvalidArgument(f"output {output.name!r}: parameter 'classification' is not supported")
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        id=request.id,
        outputs=[output.name for output in request.outputs],
        parameters=_parameters(request.parameters),
    )


def _set_parameter(parameter: InferParameter, value: ParameterValue) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


class InferenceServicer(GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's six calls on one :class:`OipService`."""

    def __init__(self, service: OipService) -> None:
        self.service = service

    @_serving_errors
    async def ServerLive(
        self, request: ServerLiveRequest, context: aio.ServicerContext
    ) -> ServerLiveResponse:
        return ServerLiveResponse(live=True)

    @_serving_errors
    async def ServerReady(
        self, request: ServerReadyRequest, context: aio.ServicerContext
    ) -> ServerReadyResponse:
        ready, _ = await self.service.server_ready()
        return ServerReadyResponse(ready=ready)

    @_serving_errors
    async def ModelReady(
        self, request: ModelReadyRequest, context: aio.ServicerContext
    ) -> ModelReadyResponse:
        ready, _ = await self.service.model_ready(request.name, request.version)
        return ModelReadyResponse(ready=ready)

    @_serving_errors
    async def ServerMetadata(
        self, request: ServerMetadataRequest, context: aio.ServicerContext
    ) -> ServerMetadataResponse:
        answer = self.service.server_metadata()
        return ServerMetadataResponse(name=answer.name, version=answer.version, extensions=answer.extensions)

    @_serving_errors
    async def ModelMetadata(
        self, request: ModelMetadataRequest, context: aio.ServicerContext
    ) -> ModelMetadataResponse:
        answer = await self.service.model_metadata(request.name, request.version)
        response = ModelMetadataResponse(name=answer.name, versions=answer.versions, platform=answer.platform)
        for target, tensors in ((response.inputs, answer.inputs), (response.outputs, answer.outputs)):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    @_serving_errors
    async def ModelInfer(
        self, request: ModelInferRequest, context: aio.ServicerContext
    ) -> ModelInferResponse:
        answer = await self.service.infer(
            infer_request(request, self.service.max_decoded_bytes),
            timeout_s=_timeout(context),
            request_headers=_headers(context),
        )
        response = ModelInferResponse(
            model_name=answer.model_name, model_version=answer.model_version, id=answer.id
        )
        for key, value in answer.parameters.items():
            _set_parameter(response.parameters[key], value)
        for output in answer.outputs:
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.values.shape)
            response.raw_output_contents.append(codec.to_raw(output.values))
        if answer.headers:
            context.set_trailing_metadata(
                tuple((key.lower(), value) for key, value in answer.headers.items())
            )
        return response


def add_oip_servicer(server: aio.Server, service: OipService) -> None:
    """Serve ``inference.GRPCInferenceService`` on ``server`` from ``service``."""
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
