"""The uvicorn server both REST front ends run on, inside a process that owns its signals.

A request the HTTP parser itself refuses (``Content-Length: abc``, a URL it cannot take) never
reaches the app; uvicorn answers those with a plain-text 400, which is replaced here by TF
Serving's JSON error body so every answer a client sees has the same shape.
"""

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
        http=_json_error_protocol(),
        lifespan="off",
        access_log=False,
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(grace_s)),
    )
    return _Server(config)


def _json_error_protocol() -> Any:
    """uvicorn's httptools protocol, answering unparseable requests with ``{"error": ...}``."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    from serving.errors import rest_error_body

    class _JsonErrorProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = rest_error_body(f"Malformed request: {msg}")
            head = [
                STATUS_LINE[400],
                *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
            ]
            self.transport.write(b"".join([*head, body]))
            self.transport.close()

    return _JsonErrorProtocol
