"""The serving core's contract: what the REST and gRPC adapters call, for any server.

Two servers speak TF Serving's API: the ensemble gateway and the local stand-in backend. Each
implements :class:`ServingCore`; the adapters (``serving.rest``, ``serving.grpc``) only convert
wire types and delegate here, so both servers share one REST and one gRPC front end.
Errors are raised as ``serving.errors.ServingError`` subclasses, which carry the status code.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from serving.errors import InvalidArgument

if TYPE_CHECKING:
    from serving.protos import SignatureDefMap


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a request addresses: TF Serving's ModelSpec (a version, a label, or neither)."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A signature tensor as metadata reports it: dtype and shape (batch dimension -1)."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]


@dataclass(slots=True)
class PredictResult:
    """A predict answer: the outputs and the model spec that actually served it."""

    outputs: dict[str, np.ndarray]
    name: str
    version: int
    signature_name: str = "serving_default"
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (REST) / trailing metadata (gRPC), e.g. members answered."""


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One entry of TF Serving's ``model_version_status``."""

    version: int
    state: str  # UNKNOWN | START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """GetModelMetadata's answer: resolved spec and the ``signature_def`` map."""

    name: str
    version: int
    signature_def: SignatureDefMap


def check_output_filter(requested: Sequence[str], known: Collection[str]) -> None:
    """TF Serving's checks on a Predict ``output_filter``: every alias known, none twice."""
    seen: set[str] = set()
    for alias in requested:
        if alias not in known:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(known))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


class ServingCore(Protocol):
    """The operations TF Serving's API exposes, in numpy terms."""

    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        """Input names with dtype and shape: REST needs them to parse JSON values.

        Raises NotFound for an unknown model, version or label.
        """
        ...

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        *,
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
        request_headers: Mapping[str, str] | None = None,
    ) -> PredictResult:
        """Run the model. ``timeout_s`` is the caller's remaining deadline, if it set one.

        ``request_headers`` are the lower-cased HTTP headers or gRPC invocation metadata; opt-in
        extensions read them, plain TF Serving clients never send them.
        """
        ...

    async def metadata(self, ref: ModelRef) -> ModelMetadata: ...

    async def status(self, ref: ModelRef) -> list[VersionStatus]: ...
