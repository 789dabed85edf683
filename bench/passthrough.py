"""The floor for a Python gRPC gateway: a bare pass-through fan-out, for the gateway benchmark.

It takes TF Serving Predict requests as raw bytes, sends each one to every member at once with the
member's name in ``model_spec``, waits for all of them and returns the first member's answer as it
came. No validation, no decoding of tensors, no combining, no deadlines, metrics or breakers: what
is left is what grpc.aio itself costs on this machine for one call in and N calls out, which no
gateway written on grpc.aio can go below.

    python bench/passthrough.py --port P --backend HOST:PORT --members m0,m1,m2
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from serving.fake_backend import serve_until_signalled
from serving.protos import PredictRequest

_SERVICE = "tensorflow.serving.PredictionService"
_PREDICT = f"/{_SERVICE}/Predict"


async def serve(port: int, backend: str, members: list[str]) -> None:
    channel = grpc.aio.insecure_channel(backend)
    call = channel.unary_unary(_PREDICT)  # bytes in, bytes out

    async def predict(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = PredictRequest.FromString(raw)
        member_requests = []
        for name in members:
            request.model_spec.name = name
            member_requests.append(request.SerializeToString())
        answers = await asyncio.gather(*(call(body) for body in member_requests))
        return bytes(answers[0])

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    try:
        await serve_until_signalled(server)
    finally:
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the members' TF Serving gRPC address")
    parser.add_argument("--members", required=True, help="comma-separated member model names")
    args = parser.parse_args()
    import uvloop  # the gateway's loop, so the floor is measured on the same footing

    uvloop.run(serve(args.port, args.backend, args.members.split(",")))


if __name__ == "__main__":
    main()
