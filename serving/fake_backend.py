"""A fake TF Serving member backend for gateway tests and benchmarks: our protos on grpc.aio, no TensorFlow.

Run as ``python -m serving.fake_backend --port P --models toy-m0,toy-m1`` with
optional ``--delay-ms`` and ``--fail-rate``, and ``--rest-port`` to answer REST ``:predict`` too.
Each model answers ``serving.testing.member_answer`` for its name, so tests know the offline
answer exactly. It prints ``READY`` once it listens.

``--per-call-ms X --per-row-ms Y --serial`` models a member on a GPU: each model executes one call
at a time (calls queue behind a lock per model) and a call costs ``X + Y * rows`` milliseconds, so
one call carrying many rows is much cheaper than as many calls carrying one row each. The cost is
waited, not burnt, so it takes no CPU from the processes sharing the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
from dataclasses import dataclass

import grpc
import numpy as np

from serving.protos import (
    DataType,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelServiceServicer,
    ModelSpec,
    PredictionServiceServicer,
    PredictRequest,
    PredictResponse,
    SignatureDefMap,
    add_ModelServiceServicer_to_server,
    add_PredictionServiceServicer_to_server,
)
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import N_CLASSES, N_FEATURES, member_answer

AVAILABLE = 30


@dataclass(frozen=True, slots=True)
class Execution:
    """How a model executes a call: a fixed cost, a cost per row, and one call at a time or not."""

    per_call_s: float = 0.0
    per_row_s: float = 0.0
    serial: bool = False

    def cost_s(self, rows: int) -> float:
        return self.per_call_s + self.per_row_s * rows


class FakeMembers(PredictionServiceServicer, ModelServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        models: list[str],
        version: int,
        delay_s: float,
        fail_rate: float,
        slow: set[str],
        execution: Execution | None = None,
    ) -> None:
        self.models = set(models)
        self.slow = slow or self.models
        self.version = version
        self.delay_s = delay_s
        self.fail_rate = fail_rate
        self.execution = execution or Execution()
        self.locks = {m: asyncio.Lock() for m in models} if self.execution.serial else {}

    async def _execute(self, name: str, rows: int) -> None:
        cost_s = self.execution.cost_s(rows)
        if not cost_s:
            return
        lock = self.locks.get(name)
        if lock is None:
            await asyncio.sleep(cost_s)
            return
        async with lock:
            await asyncio.sleep(cost_s)

    async def _check(self, spec: ModelSpec, context: grpc.aio.ServicerContext) -> None:
        """TF Serving's NOT_FOUND for a model, or a version of it, that is not loaded here."""
        if spec.name not in self.models:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})"
            )
        if spec.HasField("version") and spec.version.value != self.version:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
            )

    async def Predict(self, request: PredictRequest, context: grpc.aio.ServicerContext) -> PredictResponse:
        await self._check(request.model_spec, context)
        if "x" not in request.inputs:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "input tensor alias not found in signature: x"
            )
        answer = await self.answer(request.model_spec.name, from_tensor_proto(request.inputs["x"]))
        if answer is None:
            await context.abort(grpc.StatusCode.INTERNAL, "injected failure")
        response = PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = "serving_default"
        response.outputs["probabilities"].CopyFrom(to_tensor_proto(answer))
        return response

    async def answer(self, name: str, x: np.ndarray) -> np.ndarray | None:
        """Model ``name``'s answer for ``x`` after its delay and execution cost; None: an injected failure."""
        if self.delay_s and name in self.slow:
            await asyncio.sleep(self.delay_s)
        if self.fail_rate and random.random() < self.fail_rate:
            return None
        await self._execute(name, int(np.shape(x)[0]) if np.ndim(x) else 1)
        return member_answer(name, np.asarray(x))

    async def GetModelMetadata(
        self, request: GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> GetModelMetadataResponse:
        await self._check(request.model_spec, context)
        signatures = SignatureDefMap()
        signature = signatures.signature_def["serving_default"]
        signature.method_name = "tensorflow/serving/predict"
        for key, size, dtype in (("x", N_FEATURES, "inputs"), ("probabilities", N_CLASSES, "outputs")):
            info = getattr(signature, dtype)[key]
            info.name = f"serving_default_{key}:0"
            info.dtype = DataType.DT_FLOAT
            info.tensor_shape.dim.add().size = -1
            info.tensor_shape.dim.add().size = size
        response = GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.version
        response.metadata["signature_def"].Pack(signatures)
        return response

    async def GetModelStatus(
        self, request: GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> GetModelStatusResponse:
        await self._check(request.model_spec, context)
        response = GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.version
        status.state = AVAILABLE  # type: ignore[assignment]
        return response


async def serve(
    port: int,
    models: list[str],
    version: int,
    delay_s: float,
    fail_rate: float,
    slow: set[str],
    execution: Execution | None = None,
    rest_port: int = 0,
) -> None:
    server = grpc.aio.server()
    servicer = FakeMembers(models, version, delay_s, fail_rate, slow, execution)
    add_PredictionServiceServicer_to_server(servicer, server)
    add_ModelServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    rest = asyncio.create_task(_serve_rest(servicer, rest_port)) if rest_port else None
    try:
        await serve_until_signalled(server)
    finally:
        if rest is not None:
            rest.cancel()


async def _serve_rest(members: FakeMembers, port: int) -> None:
    """TF Serving's REST ``:predict`` (row format) for the same models, for REST-speaking clients."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.rest.server import uvicorn_server

    async def predict(request: Request) -> JSONResponse:
        name = request.path_params["call"].removesuffix(":predict")
        if name not in members.models:
            return JSONResponse({"error": f"Servable not found for request: Latest({name})"}, 404)
        body = await request.json()
        answer = await members.answer(name, np.asarray(body["instances"], dtype=np.float32))
        if answer is None:
            return JSONResponse({"error": "injected failure"}, 500)
        return JSONResponse({"predictions": answer.tolist()})

    app = Starlette(routes=[Route("/v1/models/{call}", predict, methods=["POST"])])
    # The signals stay with serve_until_signalled; cancelling this task stops the server.
    await uvicorn_server(app, host="127.0.0.1", port=port, grace_s=1, log_level="warning").serve()


async def serve_until_signalled(server: grpc.aio.Server) -> None:
    """Start ``server``, print READY, and stop it on SIGTERM or SIGINT."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--slow-models", default="", help="models the delay applies to (default: all)")
    parser.add_argument("--per-call-ms", type=float, default=0.0, help="fixed cost of executing a call")
    parser.add_argument("--per-row-ms", type=float, default=0.0, help="cost of each row of a call")
    parser.add_argument("--serial", action="store_true", help="each model executes one call at a time")
    parser.add_argument("--rest-port", type=int, default=0, help="also serve REST :predict here (0: off)")
    args = parser.parse_args(argv)
    slow = {m for m in args.slow_models.split(",") if m}
    execution = Execution(args.per_call_ms / 1000, args.per_row_ms / 1000, args.serial)
    asyncio.run(
        serve(
            args.port,
            args.models.split(","),
            args.version,
            args.delay_ms / 1000,
            args.fail_rate,
            slow,
            execution,
            args.rest_port,
        )
    )


if __name__ == "__main__":
    main()
