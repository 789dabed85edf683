"""A stand-in servable for manager and core tests that need no TensorFlow."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from serving.core import TensorInfo
from serving.errors import FailedPrecondition
from serving.protos import DataType, SignatureDefMap


class FakeServable:
    """Answers ``y = x * version`` after ``delay_s``; records how many calls overlap."""

    active = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, path: Path, delay_s: float = 0.0) -> None:
        self.path = path
        self.version = int(path.name)
        self.delay_s = delay_s
        self.signature_defs = SignatureDefMap()
        sig = self.signature_defs.signature_def["serving_default"]
        sig.inputs["x"].name = "x:0"
        sig.inputs["x"].dtype = DataType.DT_FLOAT

    def input_signature(self, signature_name: str) -> Mapping[str, TensorInfo]:
        if signature_name not in ("", "serving_default"):
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        return {"x": TensorInfo(np.dtype(np.float32), (-1,))}

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> tuple[str, dict[str, np.ndarray]]:
        with FakeServable.lock:
            FakeServable.active += 1
            FakeServable.peak = max(FakeServable.peak, FakeServable.active)
        try:
            time.sleep(self.delay_s)
            return "serving_default", {"y": inputs["x"] * self.version}
        finally:
            with FakeServable.lock:
                FakeServable.active -= 1


def make_versions(base: Path, *versions: int) -> None:
    """Version folders that look like SavedModels to the manager's scan."""
    for version in versions:
        folder = base / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "saved_model.pb").write_bytes(b"")
