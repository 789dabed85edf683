"""A tiny HTTP server on 127.0.0.1 that answers the gateway's comparison endpoint, for the online gate.

The summaries it serves are made by the gateway's own :class:`ComparisonWindow`, fed with paired
answers whose agreement, latency and errors the test chooses, so the gate reads the real schema.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from contracts.manifest import OutputKind
from serving.traffic.comparison import ComparisonWindow, SideObservation

KINDS: dict[str, OutputKind] = {"probabilities": "probabilities"}


def summary_document(
    ensemble: str,
    *,
    pairs: int,
    agreement: float = 1.0,
    champion: tuple[str, int] = ("champion", 1),
    challenger: tuple[str, int] = ("challenger", 2),
    champion_latency_s: float = 0.010,
    challenger_latency_s: float = 0.011,
    challenger_errors: int = 0,
) -> dict[str, Any]:
    """A summary of ``pairs`` paired one-row requests, the first ``agreement`` share of them agreeing."""
    window = ComparisonWindow(ensemble, champion[0], challenger[0], max_requests=10_000, max_age_s=3600.0)
    agreeing = round(pairs * agreement)
    for i in range(pairs):
        ref = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
        new = ref if i < agreeing else np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
        failed = i >= pairs - challenger_errors
        window.record(
            SideObservation(champion[1], champion_latency_s, {"probabilities": ref}, KINDS),
            SideObservation(
                challenger[1],
                challenger_latency_s,
                None if failed else {"probabilities": new},
                KINDS,
                error="UNAVAILABLE" if failed else None,
            ),
        )
    return dict(json.loads(window.summary().model_dump_json()))


class ComparisonServer:
    """Serves ``routes[path] = (status, body)``; records the requests it got."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.requests: list[dict[str, str]] = []
        self.url = ""

    def serve(self, path: str, document: dict[str, Any] | bytes, status: int = 200) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.routes[path] = (status, body)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                status, body = server.routes.get(self.path, (404, b'{"error": "no such route"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def comparison_server() -> Iterator[ComparisonServer]:
    """A :class:`ComparisonServer` listening on a free port of 127.0.0.1 until the block ends."""
    state = ComparisonServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
