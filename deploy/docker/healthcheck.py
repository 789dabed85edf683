"""Container health check of the gateway image: exit 0 when ``/healthz`` answers 200, else 1.

Standard library only (the image has no curl). The port follows ``ENSEMBLE_REST_PORT`` so a
container that moves the REST port stays healthy-checked without a rebuild.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_REST_PORT = 8501
TIMEOUT_S = 3.0


def check(port: int, path: str = "/healthz", timeout_s: float = TIMEOUT_S) -> bool:
    """True when ``http://127.0.0.1:<port><path>`` answers with status 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    raw_port = os.environ.get("ENSEMBLE_REST_PORT", str(DEFAULT_REST_PORT))
    if not raw_port.isdigit():
        print(f"unhealthy: ENSEMBLE_REST_PORT={raw_port!r} is not a port", file=sys.stderr)
        return 1
    if check(int(raw_port)):
        return 0
    print(f"unhealthy: no 200 from /healthz on port {raw_port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
