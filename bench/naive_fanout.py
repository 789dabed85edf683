"""What a user would write instead of the gateway: the obvious fan-out, for the gateway benchmark.

FastAPI, REST in; one ``httpx.AsyncClient`` calling every member's REST ``:predict`` at once; the
numpy mean of their ``predictions``; JSON out; one uvicorn worker on uvloop. No validation,
deadlines, breakers or metrics.

    python bench/naive_fanout.py --port P --members http://127.0.0.1:8601/v1/models/m0,...
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request


def create_app(members: list[str]) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(timeout=10)

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict[str, list[list[float]]]:
        body = await request.json()
        answers = await asyncio.gather(*(client.post(f"{m}:predict", json=body) for m in members))
        stacked = np.array([a.json()["predictions"] for a in answers], dtype=np.float32)
        return {"predictions": stacked.mean(axis=0).tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--members", required=True, help="comma-separated member model URLs")
    args = parser.parse_args()
    print("READY", flush=True)  # uvicorn binds at once; the benchmark's first calls wait for it
    uvicorn.run(
        create_app(args.members.split(",")),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
