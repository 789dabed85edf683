"""The serving core's side of champion vs challenger: route a request, report each side's answer.

:class:`TrafficHook` is what :class:`serving.ensemble.EnsembleCore` calls around one predict:
:meth:`~TrafficHook.route` before the request is resolved (the policy may send it to the champion
or the challenger alias), then :meth:`~TrafficHook.answer` answers it from the side chosen and
hands the controller the other side's answer as a callable to run in the background (shadow),
or the failure the client gets. Without a controller every call is a no-op. The policies are
decided in :mod:`serving.traffic.routing` and recorded by the controller, not here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Generic, TypeVar

import numpy as np

from contracts.manifest import Manifest
from serving.core import ModelRef
from serving.detail import NO_DETAIL, Detail
from serving.inputs import validate_inputs
from serving.manifest_source import ServedManifests, served_version
from serving.traffic.comparison import SideObservation
from serving.traffic.controller import ShadowCall, TrafficController
from serving.traffic.routing import ALIAS_HEADER, AS_ADDRESSED, Route

A = TypeVar("A")

Answer = Callable[
    [Manifest, Mapping[str, np.ndarray], tuple[str, ...], Detail, float],
    Awaitable[tuple[dict[str, np.ndarray], A]],
]
"""``EnsembleCore.answer``: a manifest's outputs for validated inputs (and how they came), by an
event-loop deadline."""

Request = tuple[Mapping[str, np.ndarray], tuple[str, ...], Detail, float]
"""One request as ``EnsembleCore.answer`` takes it after its manifest: inputs, output filter,
detail, deadline."""


def alias_header(decided: Route) -> dict[str, str]:
    """The response header naming the alias that answered, when the policy chose it."""
    return {ALIAS_HEADER: decided.label} if decided.label is not None else {}


class TrafficHook(Generic[A]):
    """Champion vs challenger around the core's predict; a no-op without a controller."""

    def __init__(self, controller: TrafficController | None, answer: Answer[A], deadline_s: float) -> None:
        """``deadline_s`` bounds a shadow call's fan-out like a request's."""
        self.controller = controller
        self._answer = answer
        self._deadline_s = deadline_s

    def route(
        self, served: ServedManifests | None, ref: ModelRef, headers: Mapping[str, str] | None
    ) -> tuple[ModelRef, Route]:
        """What the request is resolved as, and the controller's decision for it."""
        if self.controller is None or served is None or ref.name != served.name:
            return ref, AS_ADDRESSED
        versions = {alias: served_version(manifest) for alias, manifest in served.labels.items()}
        decided = self.controller.route(
            served.name, label=ref.label, version=ref.version, headers=headers, served=versions
        )
        if decided.label is None:
            return ref, decided
        return replace(ref, label=decided.label, version=None), decided

    async def answer(
        self, served: ServedManifests | None, decided: Route, manifest: Manifest, request: Request
    ) -> tuple[dict[str, np.ndarray], A]:
        """``manifest``'s answer to ``request``, reported to the controller with the other side's
        answer as a shadow call when the policy asks; a failure is reported and raised."""
        controller = self.controller
        if controller is None or served is None or decided.label is None:
            return await self._answer(manifest, *request)  # not routed: nothing to time or report
        started = time.perf_counter()
        try:
            outputs, how = await self._answer(manifest, *request)
        except Exception as exc:
            controller.answered(served.name, decided, observation(manifest, started, None, exc), None)
            raise
        shadow = self._shadow_call(served, decided, request[0], request[1])
        controller.answered(served.name, decided, observation(manifest, started, outputs), shadow)
        return outputs, how

    def _shadow_call(
        self,
        served: ServedManifests,
        decided: Route,
        inputs: Mapping[str, np.ndarray],
        output_filter: tuple[str, ...],
    ) -> ShadowCall | None:
        if decided.shadow_label is None or decided.shadow_label not in served.labels:
            return None
        shadow = served.labels[decided.shadow_label]

        async def call() -> SideObservation:
            started = time.perf_counter()
            # The other side may take other inputs: checked like a request of its own; a refusal
            # is that side's failure, recorded as such by the controller.
            checked = validate_inputs(shadow, inputs)
            deadline = asyncio.get_running_loop().time() + self._deadline_s
            outputs, _ = await self._answer(shadow, checked, output_filter, NO_DETAIL, deadline)
            return observation(shadow, started, outputs)

        return call


def observation(
    manifest: Manifest,
    started: float,
    outputs: Mapping[str, np.ndarray] | None,
    error: BaseException | None = None,
) -> SideObservation:
    """One side's answer: the manifest's own outputs it gave (detail outputs are not compared)."""
    kinds = {spec.name: spec.kind for spec in manifest.outputs}
    answered = None if outputs is None else {name: a for name, a in outputs.items() if name in kinds}
    return SideObservation(
        served_version(manifest),
        time.perf_counter() - started,
        answered,
        {name: kind for name, kind in kinds.items() if answered is None or name in answered},
        error=None if error is None else type(error).__name__,
    )
