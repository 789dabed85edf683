"""Fixtures for the protocol's tests: the real clients, run from their own virtual environment."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.serving.oip.client_venv import ClientVenvError, client_python

CLIENTS_SCRIPT = Path(__file__).with_name("clients.py")


def _family(call: dict[str, Any]) -> str:
    return "kserve" if call["client"].startswith("kserve") else "triton"


RunClients = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def run_clients() -> RunClients:
    """Runs a list of calls through tritonclient and the KServe SDK (``clients.py``); one result each."""
    try:
        python = client_python()
    except ClientVenvError as exc:
        pytest.fail(f"the client environment could not be built: {exc}")

    def run_family(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # -I: isolated, so nothing of the project's environment leaks into the clients' interpreter.
        result = subprocess.run(
            [str(python), "-I", str(CLIENTS_SCRIPT)],
            input=json.dumps(calls),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        answers: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
        assert len(answers) == len(calls)
        return answers

    def run(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # tritonclient and the KServe SDK cannot share a process (same protobuf names): one each.
        answers: list[dict[str, Any]] = [{} for _ in calls]
        for library in ("triton", "kserve"):
            indices = [i for i, call in enumerate(calls) if _family(call) == library]
            if indices:
                for index, answer in zip(indices, run_family([calls[i] for i in indices]), strict=True):
                    answers[index] = answer
        return answers

    return run
