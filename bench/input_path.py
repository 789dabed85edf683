"""What the gateway spends turning a request's inputs into checked arrays, per request, in-process.

The adapters' conversion and the core's input validation, with no network and no members: a gRPC
``PredictRequest`` through the signature lookup, ``decode_inputs`` and ``validate_inputs``, and a
REST body through ``parse_predict_request`` and ``validate_inputs``, for a small and a 64-row
request. Run it on two checkouts to compare (``PYTHONPATH=<other checkout> python
bench/input_path.py --label ...``); code without ``decode_inputs`` is measured with the
per-tensor decode it had. Each run is appended to ``bench/results/input-path-<date>.{jsonl,md}``
with the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from record import append_run, run_record  # bench/record.py, beside this script

from contracts.manifest import Combiner, Manifest, MemberRef, OutputSpec, TensorSpec
from serving.ensemble import EnsembleCore
from serving.inputs import validate_inputs
from serving.manifest_source import ServedManifests
from serving.protos import PredictRequest
from serving.tensors import from_tensor_proto, parse_predict_request, to_tensor_proto

REPO = Path(__file__).resolve().parents[1]


def _manifest() -> Manifest:
    return Manifest(
        name="bench",
        version=1,
        members=[MemberRef(name=f"bench-m{i}", version=1, weight=0.2) for i in range(5)],
        combiner=Combiner(method="weighted_mean", min_members=1),
        inputs=[
            TensorSpec(name="pixels", dtype="float32", shape=[-1, 64]),
            TensorSpec(name="age", dtype="float32", shape=[-1]),
            TensorSpec(name="color", dtype="string", shape=[-1]),
        ],
        outputs=[
            OutputSpec(
                name="probabilities", dtype="float32", shape=[-1, 10], kind="probabilities", target="y"
            )
        ],
    )


def _grpc_path(core: Any, manifest: Manifest, request: PredictRequest) -> Callable[[], object]:
    import serving.tensors
    from serving.core import ModelRef

    # The code before decode_inputs decoded one tensor at a time, with no bound.
    decode_inputs: Any = getattr(serving.tensors, "decode_inputs", None)

    ref = ModelRef("bench")
    limit = 64 * 2**20

    def run() -> object:
        if decode_inputs is not None:
            inputs = decode_inputs(request.inputs, core.input_signature(ref), limit)
        else:
            inputs = {name: from_tensor_proto(tensor) for name, tensor in request.inputs.items()}
        return validate_inputs(manifest, inputs)

    return run


def _rest_path(core: Any, manifest: Manifest, body: bytes) -> Callable[[], object]:
    from serving.core import ModelRef

    ref = ModelRef("bench")

    def signature(_: str) -> Any:
        return core.input_signature(ref)

    def run() -> object:
        try:
            parsed = parse_predict_request(body, signature, 64 * 2**20)
        except TypeError:  # the code before the bound took no third argument
            parsed = parse_predict_request(body, signature)
        return validate_inputs(manifest, parsed.inputs)

    return run


def _requests(rows: int) -> tuple[PredictRequest, bytes]:
    rng = np.random.default_rng(rows)
    pixels = rng.integers(0, 16, size=(rows, 64)).astype(np.float32)
    age = rng.uniform(20, 80, size=rows).round(1).astype(np.float32)
    color = np.array([b"red", b"blue"] * rows, dtype=object)[:rows]
    request = PredictRequest()
    request.model_spec.name = "bench"
    for name, array in (("pixels", pixels), ("age", age), ("color", color)):
        request.inputs[name].CopyFrom(to_tensor_proto(array))
    body = orjson.dumps(
        {
            "instances": [
                {"pixels": pixels[i].tolist(), "age": float(age[i]), "color": color[i].decode()}
                for i in range(rows)
            ]
        }
    )
    return request, body


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """The best of several timings of CPU time (the machine may be shared), each of enough calls
    to take about 0.2 s."""
    timer = timeit.Timer(fn, timer=time.process_time)
    number, elapsed = timer.autorange()
    repeats = max(3, round(seconds / max(elapsed, 1e-3)))
    return min(timer.repeat(repeat=repeats, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per measurement")
    parser.add_argument("--label", default="this checkout", help="what is measured, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    manifest = _manifest()
    core = EnsembleCore(ServedManifests(default=manifest), caller=None)  # type: ignore[arg-type]
    results: dict[str, float] = {}
    for rows in (1, 64):
        request, body = _requests(rows)
        results[f"grpc, {rows} row(s)"] = _per_call_us(_grpc_path(core, manifest, request), args.seconds)
        results[f"rest, {rows} row(s)"] = _per_call_us(_rest_path(core, manifest, body), args.seconds)

    record = run_record(
        args.label, cpu_microseconds_per_request={name: round(us, 1) for name, us in results.items()}
    )
    print(json.dumps(record, indent=2))
    title = [
        "# Input conversion and validation: CPU per request, in-process",
        "",
        "`bench/input_path.py`: signature lookup, decoding and validation, no network, no members.",
        "Each run is the best of several repeats; runs of different checkouts alternate.",
    ]
    table = [
        "| request | µs of CPU per request |",
        "|---|---|",
        *(f"| {name} | {us:.1f} |" for name, us in results.items()),
    ]
    append_run(args.out, "input-path", record, title, table)


if __name__ == "__main__":
    main()
