"""The Open Inference Protocol's operations on a ``ServingCore``, shared by its REST and gRPC adapters.

The transports decode their bodies into :class:`InferRequest` and encode :class:`InferAnswer`;
everything the protocol means in between lives here once:

* a model version string of digits is a version number, any other is a version label (a
  registry alias): ``versions/champion`` is TF Serving's ``labels/champion``;
* a tensor's datatype must be the model's (``FP64`` data for an ``FP32`` input is an error, as in
  Triton), checked against the core's input signature before the core runs;
* ``outputs`` is TF Serving's ``output_filter``;
* the core's ``x-ensemble-*`` extensions are also parameters: a request parameter
  ``ensemble_detail`` is the ``x-ensemble-detail`` header, and each ``x-ensemble-*`` answer header
  comes back as a response parameter (``ensemble_members``, ``ensemble_manifest_version``).

Validation, quorum, metrics and the extensions themselves stay in the core.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from serving.core import ModelRef, ServingCore
from serving.errors import FailedPrecondition, InvalidArgument
from serving.oip.datatypes import datatype_of, datatype_of_tf
from serving.protos import TensorInfoProto

ParameterValue = bool | int | float | str
Readiness = Callable[[], Awaitable[tuple[bool, str]]]
"""Whether the server is ready for inference, and why not."""

EXTENSIONS: Final = ("binary_tensor_data", "parameters")
"""The protocol extensions served: Triton's binary tensor data over REST, and parameters."""

_EXTENSION_HEADER: Final = "x-ensemble-"
_EXTENSION_PARAMETER: Final = "ensemble_"
_DEFAULT_SIGNATURE: Final = "serving_default"


@dataclass(frozen=True, slots=True)
class InputTensor:
    """A decoded request tensor; ``values`` already has the tensor's shape and datatype."""

    name: str
    datatype: str
    values: np.ndarray


@dataclass(frozen=True, slots=True)
class InferRequest:
    """An inference request, whichever transport it came by."""

    model_name: str
    model_version: str
    inputs: list[InputTensor]
    id: str = ""
    outputs: list[str] = field(default_factory=list)
    """Requested output names; empty for every output."""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """An answer tensor, with the datatype its values travel as."""

    name: str
    datatype: str
    values: np.ndarray


@dataclass(frozen=True, slots=True)
class InferAnswer:
    """An inference answer, before its transport encodes it."""

    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, ParameterValue]
    headers: dict[str, str]
    """The core's extra headers (REST) / trailing metadata (gRPC), as the TF Serving API sends them."""


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """An input or output of model metadata; -1 for a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadataAnswer:
    """A model's served versions, platform, inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class ServerMetadataAnswer:
    """The server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


def model_ref(name: str, version: str) -> ModelRef:
    """The core's reference for a protocol model name and version string ("" for the default)."""
    if not name:
        raise InvalidArgument("the request names no model")
    if not version:
        return ModelRef(name=name)
    if version.isdigit():
        return ModelRef(name=name, version=int(version))
    return ModelRef(name=name, label=version)


def extension_headers(parameters: Mapping[str, ParameterValue]) -> dict[str, str]:
    """The ``x-ensemble-*`` headers that ``ensemble_*`` request parameters stand for."""
    return {
        _EXTENSION_HEADER + key.removeprefix(_EXTENSION_PARAMETER).replace("_", "-"): value
        for key, value in parameters.items()
        if key.startswith(_EXTENSION_PARAMETER) and isinstance(value, str)
    }


def extension_parameters(headers: Mapping[str, str]) -> dict[str, ParameterValue]:
    """The response parameters for a core answer's ``x-ensemble-*`` headers."""
    return {
        _EXTENSION_PARAMETER + key.lower().removeprefix(_EXTENSION_HEADER).replace("-", "_"): value
        for key, value in headers.items()
        if key.lower().startswith(_EXTENSION_HEADER)
    }


def _described(infos: Mapping[str, TensorInfoProto]) -> list[TensorMetadata]:
    """Signature tensors as the protocol's tensor metadata (-1 for a dimension of any size)."""
    return [
        TensorMetadata(
            name,
            datatype_of_tf(info.dtype),
            [-1] if info.tensor_shape.unknown_rank else [int(dim.size) for dim in info.tensor_shape.dim],
        )
        for name, info in sorted(infos.items())
    ]


def _server_version() -> str:
    try:
        return importlib.metadata.version("tf-ensemble")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OipService:
    """The protocol on one core; ``platform`` names what serves the models (model metadata)."""

    def __init__(
        self,
        core: ServingCore,
        *,
        server_name: str,
        platform: str,
        ready: Readiness,
        max_decoded_bytes: int | None = None,
    ) -> None:
        self.core = core
        self.max_decoded_bytes = max_decoded_bytes
        """What one request's input tensors may decode to together (None: no bound)."""
        self.server_name = server_name
        self.platform = platform
        self._ready = ready
        self._version = _server_version()

    # --- health and metadata -------------------------------------------------------------------
    async def server_ready(self) -> tuple[bool, str]:
        return await self._ready()

    def server_metadata(self) -> ServerMetadataAnswer:
        return ServerMetadataAnswer(self.server_name, self._version, list(EXTENSIONS))

    async def model_ready(self, name: str, version: str) -> tuple[bool, str]:
        """Whether the addressed version is AVAILABLE (NotFound for an unknown model or version)."""
        statuses = await self.core.status(model_ref(name, version))
        if any(status.state == "AVAILABLE" for status in statuses):
            return True, "ready"
        states = ", ".join(f"version {status.version} {status.state}" for status in statuses)
        return False, f"model {name} is not ready ({states or 'no versions'})"

    async def model_metadata(self, name: str, version: str) -> ModelMetadataAnswer:
        ref = model_ref(name, version)
        answer = await self.core.metadata(ref)
        signatures = answer.signature_def.signature_def
        # Inference runs the default signature (the protocol has no other), so that one is described.
        if _DEFAULT_SIGNATURE not in signatures:
            raise FailedPrecondition(f'model {name} has no "{_DEFAULT_SIGNATURE}" signature')
        signature = signatures[_DEFAULT_SIGNATURE]
        statuses = await self.core.status(ModelRef(name=answer.name))
        available = sorted(status.version for status in statuses if status.state == "AVAILABLE")
        return ModelMetadataAnswer(
            name=answer.name,
            versions=[str(version) for version in available],
            platform=self.platform,
            inputs=_described(signature.inputs),
            outputs=_described(signature.outputs),
        )

    # --- inference -----------------------------------------------------------------------------
    async def infer(
        self,
        request: InferRequest,
        *,
        timeout_s: float | None = None,
        request_headers: Mapping[str, str] | None = None,
    ) -> InferAnswer:
        ref = model_ref(request.model_name, request.model_version)
        expected = self.core.input_signature(ref)
        inputs: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise InvalidArgument(f"input {tensor.name!r} is given more than once")
            info = expected.get(tensor.name)
            if info is not None and datatype_of(info.dtype) != tensor.datatype:
                raise InvalidArgument(
                    f"input {tensor.name!r} has datatype {tensor.datatype}, "
                    f"the model expects {datatype_of(info.dtype)}"
                )
            inputs[tensor.name] = tensor.values
        headers = {**(request_headers or {}), **extension_headers(request.parameters)}
        wanted = list(dict.fromkeys(request.outputs))
        result = await self.core.predict(
            ref, inputs, output_filter=wanted, timeout_s=timeout_s, request_headers=headers
        )
        return InferAnswer(
            model_name=result.name,
            model_version=str(result.version),
            id=request.id,
            outputs=[
                OutputTensor(name, datatype_of(array.dtype), np.asarray(array))
                for name, array in result.outputs.items()
            ],
            parameters=extension_parameters(result.headers),
            headers=dict(result.headers),
        )
