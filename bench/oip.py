"""What the Open Inference Protocol costs next to TF Serving's API, on the same gateway and members.

One gateway in front of five fake members (``bench/gateway.py``'s set-up), asked the same one-row
question five ways: TF Serving REST (``instances``), v2 REST with JSON tensors, v2 REST with
binary tensor data (``tritonclient.http``'s default), TF Serving gRPC ``Predict`` and v2 gRPC
``ModelInfer`` with ``raw_input_contents`` (``tritonclient.grpc``'s and the KServe SDK's way).
The load generator shares the machine's cores with the gateway and the members; the recorded load
average says how busy it was besides. The adapters' own conversion work (request body to numpy
and answer back, in this process) is timed too: it is what differs between the five ways, and is
less disturbed by a busy machine than end-to-end latency.

    .venv/bin/python bench/oip.py            # writes bench/results/oip-<date>.{json,md}
    .venv/bin/python bench/oip.py --quick    # 1 second per measurement
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import orjson

# bench/ is this script's folder, so its sibling imports as a top-level module.
from gateway import MEMBERS, ROWS, Result, _cpu_seconds, _drive, _summarise, ensemble, machine

from serving.core import TensorInfo
from serving.grpc.oip import infer_request
from serving.oip import codec
from serving.oip.rest_body import format_infer_response, parse_infer_request
from serving.oip.service import InferAnswer, OutputTensor
from serving.protos import PredictionServiceStub, PredictRequest, PredictResponse
from serving.protos.inference.open_inference_grpc_pb2 import ModelInferRequest, ModelInferResponse
from serving.protos.inference.open_inference_grpc_pb2_grpc import GRPCInferenceServiceStub
from serving.tensors import (
    format_predict_response,
    from_tensor_proto,
    parse_predict_request,
    to_tensor_proto,
)

REPO = Path(__file__).resolve().parents[1]

MODEL = "bench"
CONCURRENCY = (1, 16)
WAYS = (
    "TF Serving REST",
    "v2 REST, JSON tensors",
    "v2 REST, binary tensors",
    "TF Serving gRPC",
    "v2 gRPC, raw contents",
)

Call = Callable[[], Awaitable[None]]


def _rest_call(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> Call:
    async def call() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            text = await response.read()
            if response.status != 200:
                raise RuntimeError(text[:200])

    return call


def _calls(way: str, rest_port: int, session: aiohttp.ClientSession, channel: grpc.aio.Channel) -> Call:
    x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32)
    base = f"http://127.0.0.1:{rest_port}"
    json_headers = {"content-type": "application/json"}
    if way == "TF Serving REST":
        body = orjson.dumps({"instances": x.tolist()})
        return _rest_call(session, f"{base}/v1/models/{MODEL}:predict", body, json_headers)
    if way == "v2 REST, JSON tensors":
        tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
        return _rest_call(
            session, f"{base}/v2/models/{MODEL}/infer", orjson.dumps({"inputs": [tensor]}), json_headers
        )
    if way == "v2 REST, binary tensors":
        raw = x.tobytes()
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        )
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
        return _rest_call(session, f"{base}/v2/models/{MODEL}/infer", header + raw, headers)
    if way == "TF Serving gRPC":
        stub = PredictionServiceStub(channel)
        request = PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].CopyFrom(to_tensor_proto(x))

        async def predict() -> None:
            await stub.Predict(request, timeout=10)

        return predict
    infer_stub = GRPCInferenceServiceStub(channel)
    infer_request = ModelInferRequest(model_name=MODEL)
    infer_request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    infer_request.raw_input_contents.append(x.tobytes())

    async def infer() -> None:
        await infer_stub.ModelInfer(infer_request, timeout=10)

    return infer


def conversion_us(repeats: int = 2000) -> dict[str, float]:
    """Microseconds per request that each way's adapter spends decoding the request body into
    numpy and encoding a 3-class answer, in this process (no network, no core)."""
    x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32)
    answer = np.random.default_rng(1).random((ROWS, 3)).astype(np.float32)
    signature = {"x": TensorInfo(np.dtype(np.float32), (-1, 4))}
    v1_body = orjson.dumps({"instances": x.tolist()})
    v2_json = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
            ]
        }
    )
    v2_head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    tfs_request = PredictRequest()
    tfs_request.inputs["x"].CopyFrom(to_tensor_proto(x))
    tfs_wire = tfs_request.SerializeToString()
    oip_request = ModelInferRequest(model_name=MODEL)
    oip_request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    oip_request.raw_input_contents.append(x.tobytes())
    oip_wire = oip_request.SerializeToString()
    outputs = [OutputTensor("probabilities", "FP32", answer)]

    def tfs_rest() -> None:
        parse_predict_request(v1_body, lambda _: signature)
        format_predict_response({"probabilities": answer}, columnar=False)

    def v2_rest(body: bytes, length: str | None) -> Callable[[], None]:
        def run() -> None:
            parsed = parse_infer_request(body, length, model_name=MODEL, model_version="")
            format_infer_response(InferAnswer(MODEL, "1", "", outputs, {}, {}), parsed)

        return run

    def tfs_grpc() -> None:
        request = PredictRequest.FromString(tfs_wire)
        {name: from_tensor_proto(tensor) for name, tensor in request.inputs.items()}
        response = PredictResponse()
        response.outputs["probabilities"].CopyFrom(to_tensor_proto(answer))
        response.SerializeToString()

    def v2_grpc() -> None:
        infer_request(ModelInferRequest.FromString(oip_wire))
        response = ModelInferResponse(model_name=MODEL, model_version="1")
        response.outputs.add(name="probabilities", datatype="FP32", shape=answer.shape)
        response.raw_output_contents.append(codec.to_raw(answer))
        response.SerializeToString()

    ways = {
        "TF Serving REST": tfs_rest,
        "v2 REST, JSON tensors": v2_rest(v2_json, None),
        "v2 REST, binary tensors": v2_rest(v2_head + x.tobytes(), str(len(v2_head))),
        "TF Serving gRPC": tfs_grpc,
        "v2 gRPC, raw contents": v2_grpc,
    }
    timings: dict[str, float] = {}
    for way, run in ways.items():
        run()
        best = min(timeit.repeat(run, number=repeats, repeat=5)) / repeats  # the least disturbed run
        timings[way] = round(best * 1e6, 1)
    return timings


async def run_all(duration_s: float) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, ensemble(Path(tmp)) as stack:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}")
        for concurrency in CONCURRENCY:
            for way in WAYS:
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=10)
                )
                try:
                    call = _calls(way, stack.rest_port, session, channel)
                    await _drive(call, concurrency, min(0.5, duration_s / 4))  # warm-up
                    cpu_before = _cpu_seconds(stack.gateway.pid)
                    started = time.perf_counter()
                    latencies, errors = await _drive(call, concurrency, duration_s)
                    elapsed = time.perf_counter() - started
                    cpu = _cpu_seconds(stack.gateway.pid) - cpu_before
                finally:
                    await session.close()
                protocol = "grpc" if "gRPC" in way else "rest"
                result = _summarise(way, protocol, concurrency, latencies, errors, elapsed)
                if latencies:
                    result.gateway_cpu_ms_per_request = round(cpu / len(latencies) * 1000, 3)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
        await channel.close()
    return results


def markdown(results: list[Result], meta: dict[str, object]) -> str:
    host = meta["machine"]
    assert isinstance(host, dict)
    lines = [
        f"# Open Inference Protocol next to TF Serving's API, {meta['date']}",
        "",
        f"Gateway with {MEMBERS} fake members (answering at once), {ROWS} row a request, "
        f"{meta['duration_s']} s a measurement. Machine: {host['cpu']}, {host['cores']} cores, "
        f"load average {host['load_average_1m_at_start']} at the start and "
        f"{meta['load_average_1m_at_end']} at the end (1 min; above the core count the machine was "
        "shared with other work, and the figures are slower than on a quiet machine). Load "
        "generator, gateway and members share those cores.",
        "",
        "| way | concurrency | p50 ms | p99 ms | req/s | gateway CPU ms/request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.concurrency} | {r.p50_ms} | {r.p99_ms} | {r.rps} | "
            f"{r.gateway_cpu_ms_per_request} | {r.errors} |"
        )
    conversion = meta["conversion_us"]
    assert isinstance(conversion, dict)
    lines += [
        "",
        f"The adapter's conversion alone, request in and answer out, in one process (best of 5, {ROWS} row, "
        "one 3-class output):",
        "",
        "| way | µs per request |",
        "|---|---:|",
        *(f"| {way} | {us} |" for way, us in conversion.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="1 second per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    host = machine()
    results = asyncio.run(run_all(duration))
    conversion = conversion_us(500 if args.quick else 2000)
    now = dt.datetime.now(dt.UTC)
    meta: dict[str, object] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": host,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "duration_s": duration,
        "rows_per_request": ROWS,
        "members": MEMBERS,
        "conversion_us": conversion,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"oip-{now.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(
        json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    report = markdown(results, meta)
    stem.with_suffix(".md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
