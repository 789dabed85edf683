"""The local backend's ServingCore: TF Serving's operations on the versions the manager holds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

import numpy as np

from serving.core import ModelMetadata, ModelRef, PredictResult, TensorInfo, VersionStatus
from serving.errors import DeadlineExceeded
from serving.local_server.faults import FaultInjector
from serving.local_server.manager import ModelManager

PLATFORM = "tensorflow_savedmodel"
"""What serves the models, as the Open Inference Protocol's model metadata names it."""


class LocalCore:
    """Runs predictions on loaded SavedModels in a thread pool; no lock around model calls."""

    def __init__(
        self, manager: ModelManager, executor: Executor, faults: FaultInjector | None = None
    ) -> None:
        self.manager = manager
        self.executor = executor
        self.faults = faults

    def input_signature(self, ref: ModelRef) -> Mapping[str, TensorInfo]:
        _, servable = self.manager.resolve(ref)
        return servable.input_signature(ref.signature_name)

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        *,
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
        request_headers: Mapping[str, str] | None = None,
    ) -> PredictResult:
        version, servable = self.manager.resolve(ref)
        loop = asyncio.get_running_loop()

        async def run() -> PredictResult:
            if self.faults is not None:
                await self.faults.apply(ref.name)
            signature, outputs = await loop.run_in_executor(
                self.executor, servable.run, ref.signature_name, inputs, tuple(output_filter)
            )
            return PredictResult(outputs=outputs, name=ref.name, version=version, signature_name=signature)

        if timeout_s is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout=timeout_s)
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        version, servable = self.manager.resolve(ref)
        return ModelMetadata(name=ref.name, version=version, signature_def=servable.signature_defs)

    async def status(self, ref: ModelRef) -> list[VersionStatus]:
        return self.manager.status(ref)

    async def ready(self) -> tuple[bool, str]:
        """Whether every configured model has a version AVAILABLE, and which have none."""
        waiting = sorted(name for name, model in self.manager.models.items() if not model.available())
        if waiting:
            return False, f"no version AVAILABLE yet for {', '.join(waiting)}"
        return True, "ready"
