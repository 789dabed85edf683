"""The gateway core's own CPU per 5-member predict, with the member calls answered in-process.

``EnsembleCore.predict`` on the real ``BackendPool``, whose gRPC calls are replaced by a coroutine
handing back each member's canned ``PredictResponse`` bytes, decoded as grpc would: input
validation, the request encoded once, five member calls through routes and breakers, their answers
decoded and checked, quorum, combining, metrics. No network, no adapters (``bench/input_path.py``
measures those), no micro-batching. Every scenario also records a digest of the answer's bytes,
so two checkouts can be shown to answer bit-identically.

Run it on two checkouts to compare (``PYTHONPATH=<other checkout> python bench/core_cpu.py
--label ...``). Each run is appended to ``bench/results/core-cpu-<date>.{jsonl,md}`` with the
machine and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from record import append_run, run_record  # bench/record.py, beside this script

from contracts.manifest import Combiner, Manifest, MemberRef, OutputSpec, TensorSpec
from serving.backends import BackendPool
from serving.core import ModelRef
from serving.ensemble import EnsembleCore
from serving.manifest_source import ServedManifests
from serving.metrics import GatewayMetrics
from serving.protos import PredictResponse
from serving.tensors import to_tensor_proto

REPO = Path(__file__).resolve().parents[1]
MEMBERS = 5
CLASSES = 10
SCENARIOS: dict[str, tuple[int, Mapping[str, str] | None]] = {
    "1 row": (1, None),
    "64 rows": (64, None),
    "64 rows, spread asked": (64, {"x-ensemble-detail": "spread"}),
}


def _manifest() -> Manifest:
    return Manifest(
        name="bench",
        version=1,
        members=[MemberRef(name=f"bench-m{i}", version=1, weight=0.1 + 0.05 * i) for i in range(MEMBERS)],
        combiner=Combiner(method="weighted_mean", min_members=3),
        inputs=[
            TensorSpec(name="pixels", dtype="float32", shape=[-1, 64]),
            TensorSpec(name="age", dtype="float32", shape=[-1]),
            TensorSpec(name="color", dtype="string", shape=[-1]),
        ],
        outputs=[
            OutputSpec(
                name="probabilities", dtype="float32", shape=[-1, CLASSES], kind="probabilities", target="y"
            )
        ],
    )


def _inputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "pixels": rng.integers(0, 16, size=(rows, 64)).astype(np.float32),
        "age": rng.uniform(20, 80, size=rows).round(1).astype(np.float32),
        "color": np.array([b"red", b"blue"] * rows, dtype=object)[:rows],
    }


def _answer_bytes(member: int, rows: int) -> bytes:
    """A member's serialized PredictResponse: softmax rows that differ from member to member."""
    logits = np.random.default_rng(1000 * member + rows).normal(size=(rows, CLASSES))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    response = PredictResponse()
    response.outputs["probabilities"].CopyFrom(to_tensor_proto(probabilities.astype(np.float32)))
    return bytes(response.SerializeToString())


def _stubbed_pool(rows: int) -> BackendPool:
    """A BackendPool whose channel to each member answers that member's canned bytes at once."""
    pool = BackendPool(lambda name, _alias: [f"{name}.invalid:8500"], metrics=GatewayMetrics())
    for i in range(MEMBERS):
        address = f"bench-m{i}.invalid:8500"
        body = _answer_bytes(i, rows)

        async def call(request: bytes, timeout: float, body: bytes = body) -> PredictResponse:
            return PredictResponse.FromString(body)

        # The pool's own plumbing, filled in so no channel is ever opened.
        pool._channels[address] = object()  # type: ignore[assignment]
        pool._raw_predict[address] = call  # type: ignore[assignment]
    return pool


async def _measure(rows: int, headers: Mapping[str, str] | None, seconds: float) -> tuple[float, str]:
    """Best CPU microseconds per predict over repeats of about 0.2 s, and the answer's digest."""
    core = EnsembleCore(ServedManifests(default=_manifest()), _stubbed_pool(rows), metrics=GatewayMetrics())
    ref, inputs = ModelRef("bench"), _inputs(rows)
    result = await core.predict(ref, inputs, request_headers=headers)
    digest = hashlib.sha256()
    for name in sorted(result.outputs):
        digest.update(name.encode() + result.outputs[name].tobytes())
    number = 50
    while True:  # enough calls per repeat to take about 0.2 s
        started = time.process_time()
        for _ in range(number):
            await core.predict(ref, inputs, request_headers=headers)
        elapsed = time.process_time() - started
        if elapsed >= 0.2:
            break
        number *= 2
    best = elapsed / number
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.process_time()
        for _ in range(number):
            await core.predict(ref, inputs, request_headers=headers)
        best = min(best, (time.process_time() - started) / number)
    return best * 1e6, digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per scenario")
    parser.add_argument("--label", default="this checkout", help="what is measured, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    for name, (rows, headers) in SCENARIOS.items():
        print(f"measuring {name} ...", flush=True)
        us, digest = asyncio.run(_measure(rows, headers, args.seconds))
        results[name] = {"cpu_us": round(us, 1), "answer_sha256": digest}

    record = run_record(args.label, per_predict=results)
    print(json.dumps(record, indent=2))
    title = [
        f"# The gateway core's CPU per {MEMBERS}-member predict, member calls answered in-process",
        "",
        "`bench/core_cpu.py`: `EnsembleCore.predict` over a `BackendPool` whose gRPC calls return",
        f"canned answers ({CLASSES}-class probabilities); inputs are 64 floats, one float and one",
        "string per row. Each figure is the best of several repeats of CPU time; the digest is of the",
        "answer's bytes (equal digests: bit-identical answers).",
    ]
    table = [
        "| scenario | µs of CPU per predict | answer digest |",
        "|---|---:|---|",
        *(f"| {name} | {r['cpu_us']:.1f} | `{r['answer_sha256']}` |" for name, r in results.items()),
    ]
    append_run(args.out, "core-cpu", record, title, table)


if __name__ == "__main__":
    main()
