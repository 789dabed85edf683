"""The uvicorn server both REST front ends run on, inside a process that owns its signals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def uvicorn_server(app: Any, *, host: str, port: int, grace_s: float, log_level: str | None = None) -> Any:
    """A ``uvicorn.Server`` for ``app`` that leaves SIGTERM/SIGINT to the caller.

    Both servers handle the signals themselves so that REST and gRPC drain together;
    ``grace_s`` is how long in-flight REST requests get once the caller asks it to exit.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(grace_s)),
    )
    return _Server(config)
