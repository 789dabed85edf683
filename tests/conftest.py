"""Fixtures shared by every test package."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.testing import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` bytes as they are to 127.0.0.1:``port``; everything answered until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def port() -> int:
    return free_port()
