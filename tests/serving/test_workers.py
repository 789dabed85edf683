"""``ensemble serve --workers N``: N real gateway processes on shared ports, behind one supervisor.

Correctness only: the answers, the merged metrics, the drain on SIGTERM, and the usage and startup
errors. How much faster workers are is measured in bench/gateway.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts.manifest import Manifest
from serving.testing import (
    free_port,
    gateway_args,
    gateway_env,
    grpc_predict,
    make_manifest,
    spawn_process,
    start_fake_backend,
    stop_process,
    wait_ready,
)
from tests.serving.gateway.test_gateway_process import offline, rows

pytestmark = pytest.mark.slow

WORKERS_READY = "workers are serving"
REQUESTS = 60


@dataclass
class Workers:
    supervisor: subprocess.Popen[str]
    manifest: Manifest
    rest: str
    grpc_target: str


@pytest.fixture
def slow_members() -> float:
    return 0.0


@pytest.fixture
def workers(tmp_path: Path, slow_members: float) -> Iterator[Workers]:
    manifest = make_manifest()
    path = tmp_path / "ensemble.json"
    manifest.save(path)
    backend_port, rest_port, grpc_port = free_port(), free_port(), free_port()
    backend = start_fake_backend(backend_port, [m.name for m in manifest.members], delay_ms=slow_members)
    members = {m.name: f"127.0.0.1:{backend_port}" for m in manifest.members}
    supervisor = spawn_process(
        [*gateway_args(path, members, rest_port, grpc_port), "--workers", "2"],
        env=gateway_env({"ENSEMBLE_MEMBER_DEADLINE_S": "5"}),
    )
    try:
        wait_ready(supervisor, WORKERS_READY)
        yield Workers(supervisor, manifest, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}")
    finally:
        stop_process(supervisor)
        stop_process(backend)


def _rest_predict(base: str, x: np.ndarray) -> np.ndarray:
    # A new connection per request: the kernel picks a worker per connection, not per request.
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{base}/v1/models/toy:predict", content=orjson.dumps({"instances": x.tolist()})
        )
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float32)


async def _grpc_answers(target: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    answers = []
    for x in xs:
        async with grpc.aio.insecure_channel(target) as channel:  # one connection each, as above
            answer, _ = await grpc_predict(channel, "toy", x)
        answers.append(answer)
    return answers


def _worker_shares(rest: str) -> dict[tuple[str, str], float]:
    """(pid, protocol) -> requests that worker answered, from one scrape."""
    text = httpx.get(f"{rest}/metrics", timeout=10).text
    shares = {}
    for pid, protocol, value in re.findall(
        r'^ensemble_worker_requests\{pid="(\d+)",protocol="(\w+)"\} (\S+)$', text, re.MULTILINE
    ):
        shares[(pid, protocol)] = float(value)
    return shares


def _total(rest: str, protocol: str) -> float:
    text = httpx.get(f"{rest}/metrics", timeout=10).text
    found = re.search(
        rf'^ensemble_requests_total\{{code="(?:200|OK)",protocol="{protocol}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_answers_through_two_workers_equal_the_offline_ensemble(workers: Workers) -> None:
    xs = [rows(2, seed) for seed in range(REQUESTS)]
    for x in xs:
        np.testing.assert_allclose(_rest_predict(workers.rest, x), offline(workers.manifest, x), rtol=1e-6)
    for x, answer in zip(xs, asyncio.run(_grpc_answers(workers.grpc_target, xs)), strict=True):
        np.testing.assert_allclose(answer, offline(workers.manifest, x), rtol=1e-6)


def test_one_scrape_shows_the_requests_of_every_worker(workers: Workers) -> None:
    for seed in range(REQUESTS):
        _rest_predict(workers.rest, rows(1, seed))
    asyncio.run(_grpc_answers(workers.grpc_target, [rows(1, s) for s in range(REQUESTS)]))

    for protocol in ("rest", "grpc"):
        shares = {pid: n for (pid, p), n in _worker_shares(workers.rest).items() if p == protocol}
        # Both workers served some, and the summed counter is every worker's requests together.
        assert len(shares) == 2, shares
        assert all(n > 0 for n in shares.values()), shares
        assert sum(shares.values()) >= REQUESTS
        assert _total(workers.rest, protocol) >= REQUESTS
    # No scrape goes over gRPC: there the sum over workers is exactly what was sent.
    grpc_shares = [n for (_, p), n in _worker_shares(workers.rest).items() if p == "grpc"]
    assert sum(grpc_shares) == REQUESTS
    assert _total(workers.rest, "grpc") == REQUESTS


@pytest.mark.parametrize("slow_members", [800.0])
def test_sigterm_drains_every_worker(workers: Workers) -> None:
    pids: set[int] = set()

    async def one(seed: int) -> int:
        async with httpx.AsyncClient(timeout=10) as client:  # a connection per request
            response = await client.post(
                f"{workers.rest}/v1/models/toy:predict", json={"instances": rows(1, seed).tolist()}
            )
            return response.status_code

    async def in_flight() -> list[int]:
        assert await asyncio.gather(*(one(seed) for seed in range(16))) == [200] * 16
        pids.update(int(pid) for pid, _ in _worker_shares(workers.rest))
        assert len(pids) == 2  # both workers hold requests when the signal comes
        calls = [asyncio.create_task(one(seed)) for seed in range(16)]
        await asyncio.sleep(0.4)  # every call is waiting on the slow members now
        workers.supervisor.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*calls))

    assert asyncio.run(in_flight()) == [200] * 16
    assert workers.supervisor.wait(timeout=30) == 0
    # The workers that served those requests have exited too.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_supervisor_takes_its_workers_down(workers: Workers) -> None:
    for seed in range(REQUESTS):  # enough requests that both workers have served some
        _rest_predict(workers.rest, rows(1, seed))
    pids = {int(pid) for pid, _ in _worker_shares(workers.rest)}
    assert len(pids) == 2
    workers.supervisor.kill()  # SIGKILL: no handler runs, only the workers' parent-death signal
    workers.supervisor.wait(timeout=10)
    deadline = time.monotonic() + 30
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.2)
    assert not alive, f"workers {sorted(alive)} outlived their supervisor"


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_workers_zero_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.json"
    make_manifest().save(path)
    args = [*gateway_args(path, {}, free_port(), free_port()), "--backend", "127.0.0.1:1", "--workers", "0"]
    proc = spawn_process(args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines() == ["error: workers: Input should be greater than or equal to 1"]


def test_a_taken_port_stops_every_worker_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.json"
    make_manifest().save(path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rest_port = taken.getsockname()[1]
        args = [*gateway_args(path, {}, rest_port, free_port()), "--backend", "127.0.0.1:1", "--workers", "2"]
        proc = spawn_process(args, env=gateway_env())
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot listen for REST on 127.0.0.1:{rest_port}: Address already in use"], out
