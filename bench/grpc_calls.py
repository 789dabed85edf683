"""What one grpc.aio client call costs on this machine, by the options a gateway could change.

A server process answers TF Serving's Predict method with canned bytes at once; the client sends
rounds of 5 concurrent calls (one fan-out) and measures its own CPU time per round: its event loop
and grpc's polling thread, which is the share of a gateway's CPU that every member call costs. The
options varied are those that could make a call cheaper: a registered method (what newer
generated stubs pass), a per-call deadline, decoding the answer in grpc's deserializer or not, and
the event loop (uvloop or asyncio's own).

    .venv/bin/python bench/grpc_calls.py      # appends to bench/results/grpc-calls-<date>.{jsonl,md}
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import uvloop
from record import append_run, run_record  # bench/record.py, beside this script

from serving.fake_backend import serve_until_signalled
from serving.protos import PredictResponse
from serving.testing import free_port

REPO = Path(__file__).resolve().parents[1]
SERVICE = "tensorflow.serving.PredictionService"
METHOD = f"/{SERVICE}/Predict"
FAN_OUT = 5
REQUEST = b"\x0a\x07\x0a\x05bench" + b"\x12" * 120  # a model_spec field and some payload bytes


async def _serve(port: int) -> None:
    answer = PredictResponse()
    answer.outputs["probabilities"].float_val.extend([0.1] * 10)
    body = bytes(answer.SerializeToString())

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return body

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await serve_until_signalled(server)


async def _cpu_per_fan_out(port: int, registered: bool, deadline: bool, decode: bool, rounds: int) -> float:
    """The client's best CPU seconds per round of ``FAN_OUT`` concurrent calls, over 3 repeats."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD,
            response_deserializer=PredictResponse.FromString if decode else None,
            _registered_method=registered,
        )
        timeout = 2.0 if deadline else None

        async def fan_out() -> None:
            await asyncio.gather(*(call(REQUEST, timeout=timeout) for _ in range(FAN_OUT)))

        for _ in range(rounds // 10):  # warm up the connection and the loop
            await fan_out()
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(rounds):
                await fan_out()
            best = min(best, (time.process_time() - started) / rounds)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1000, help="fan-outs per repeat")
    parser.add_argument("--label", default="this checkout", help="what is measured, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.serve))
        return

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    loops: dict[str, Callable[[Coroutine[Any, Any, float]], float]] = {
        "uvloop": uvloop.run,
        "asyncio": asyncio.run,
    }
    results: list[dict[str, Any]] = []
    try:
        time.sleep(2.0)  # the server process imports grpc and binds
        for loop, registered, deadline, decode in itertools.product(
            loops, (False, True), (True, False), (True, False)
        ):
            if loop == "asyncio" and (registered or not deadline or not decode):
                continue  # the loop is compared on the gateway's own options only
            seconds = loops[loop](_cpu_per_fan_out(port, registered, deadline, decode, args.rounds))
            row = {
                "loop": loop,
                "registered_method": registered,
                "deadline": deadline,
                "decode_answer": decode,
                "cpu_us_per_call": round(seconds / FAN_OUT * 1e6, 1),
            }
            print(row, flush=True)
            results.append(row)
    finally:
        server.terminate()
        server.wait(timeout=10)

    record = run_record(args.label, fan_out=FAN_OUT, rows=results)
    title = [
        "# What one grpc.aio client call costs, by option",
        "",
        f"`bench/grpc_calls.py`: rounds of {FAN_OUT} concurrent unary calls to a server process that",
        "answers at once; the client's CPU time (event loop and grpc's polling thread) per call, the",
        "best of 3 repeats. The gateway's own options are: uvloop, no registered method, a deadline,",
        "the answer decoded by grpc.",
    ]
    table = [
        "| loop | registered method | deadline | answer decoded | µs of CPU per call |",
        "|---|---|---|---|---:|",
        *(
            f"| {r['loop']} | {r['registered_method']} | {r['deadline']} | {r['decode_answer']} "
            f"| {r['cpu_us_per_call']} |"
            for r in results
        ),
    ]
    append_run(args.out, "grpc-calls", record, title, table)


if __name__ == "__main__":
    main()
