"""The port through which the core reaches members: the caller protocol, its request and its error.

:class:`MemberCaller` is implemented by ``serving.backends.BackendPool`` over gRPC (and by fakes
in tests). The core hands it the validated inputs once per fan-out (:meth:`MemberCaller.prepare`)
and then sends that one :class:`PreparedCall` to each member: whatever wire form the caller needs
is built once, inside the caller, and the core never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contracts.manifest import MemberRef
from serving.core import ModelMetadata

REQUEST_FAULTS = frozenset({"invalid_argument", "resource_exhausted"})
"""Member failure reasons the request itself caused (malformed, or too large): they say nothing about
the member, never count against its breaker, and reach the client as what they are."""


class MemberError(Exception):
    """A member gave no usable answer. ``reason`` is a short metric label, ``detail`` one line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """One fan-out's request, made once and sent to every member of the manifest."""

    signature_name: str
    inputs: Mapping[str, np.ndarray]
    """The validated inputs, in the dtypes and shapes the manifest declares."""
    output_filter: tuple[str, ...]
    wire: bytes = b""
    """The request as the caller sends it, encoded by :meth:`MemberCaller.prepare` (gRPC: the
    ``inputs`` and ``output_filter`` fields of a PredictRequest); empty for in-process callers."""


class MemberCaller(Protocol):
    """How the core reaches members."""

    def prepare(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: tuple[str, ...]
    ) -> PreparedCall:
        """The request for every member of one fan-out, encoded once."""
        ...

    async def send(self, member: MemberRef, call: PreparedCall, timeout_s: float) -> dict[str, np.ndarray]:
        """The member's outputs for ``call``; raises MemberError."""
        ...

    async def metadata(self, member: MemberRef, timeout_s: float) -> ModelMetadata:
        """The member's GetModelMetadata answer; raises MemberError."""
        ...

    async def available(self, member: MemberRef, timeout_s: float) -> bool:
        """Whether the member's version is AVAILABLE where a call can reach it (breaker not open)."""
        ...
