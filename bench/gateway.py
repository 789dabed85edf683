"""Gateway benchmark: latency, throughput and CPU cost of the ensemble gateway, in one run.

Members are served by the lightweight member backend from the gateway tests (a numpy model
speaking TF Serving's gRPC API), so the numbers isolate what the gateway itself adds; latency is
injected where a scenario needs it. Micro-batching is measured twice: with those members, which
answer at once and are never the bottleneck, and with GPU-like members that execute one call at a
time at a fixed cost per call, the case batching exists for. Everything runs on this machine: the
load generator, the gateway and the backends share its cores, which the recorded machine
description says.

    .venv/bin/python bench/gateway.py            # writes bench/results/gateway-<date>.{json,md}
    .venv/bin/python bench/gateway.py --quick    # shorter runs, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson

from serving.protos import PredictionServiceStub, PredictRequest
from serving.tensors import to_tensor_proto
from serving.testing import (
    GATEWAY_READY,
    free_port,
    gateway_args,
    gateway_env,
    make_manifest,
    start_fake_backend,
    start_process,
    stop_process,
)

REPO = Path(__file__).resolve().parents[1]

try:  # the REST load generator's client: aiohttp where installed (the registry extra brings it)
    import aiohttp
except ImportError:  # pragma: no cover - httpx is always there
    aiohttp = None  # type: ignore[assignment]

MEMBERS = 5
ROWS = 1
# A GPU-like member: one call executes at a time per model, at a fixed cost per call plus a small
# cost per row. TF Serving on a GPU behaves so (kernel launches and host/device copies dominate a
# small batch); the plain fake member answers at once, so it never makes the backend the bottleneck.
GPU_PER_CALL_MS = 10.0
GPU_PER_ROW_MS = 0.05
DEFAULT_MAX_DELAY_MS = 2.0  # the gateway's default max_delay_ms
# (gpu_like, batching, max_inflight_batches): None is the gateway's default (2); 0, no cap, shows
# what the cap does, since then only max_delay_ms paces the batches.
BATCHING_RUNS: tuple[tuple[bool, bool, int | None], ...] = (
    (False, False, None),
    (False, True, None),
    (False, True, 0),
    (True, False, None),
    (True, True, None),
    (True, True, 0),
)


@dataclass
class Result:
    scenario: str
    protocol: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rps: float
    gateway_cpu_ms_per_request: float | None = None
    backend_cpu_ms_per_request: float | None = None
    requests_per_batch: float | None = None
    client_cpu_ms_per_request: float | None = None


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its running descendants (a gateway's workers, uvicorn's worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        for child in children.read_text().split():
            with contextlib.suppress(OSError):
                own += _cpu_seconds(int(child))
    return own


@dataclass
class _Tally:
    """Latencies of the calls that answered, and how many failed."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    async def timed(self, call: Callable[[], Awaitable[None]], since: float | None = None) -> None:
        """Run ``call``; its latency counts from ``since`` (default: now)."""
        started = time.perf_counter() if since is None else since
        try:
            await call()
        except Exception:
            self.errors += 1
            return
        self.latencies.append(time.perf_counter() - started)


async def _drive(
    call: Callable[[], Awaitable[None]], concurrency: int, duration_s: float
) -> tuple[list[float], int]:
    """Closed loop: ``concurrency`` clients, each sending its next request when the last answered."""
    tally = _Tally()
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            await tally.timed(call)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.latencies, tally.errors


async def _drive_at_rate(
    call: Callable[[], Awaitable[None]], rate: float, duration_s: float
) -> tuple[list[float], int]:
    """Open loop: a request every ``1 / rate`` seconds whether or not earlier ones have answered.

    Each latency runs from the moment the request was due, so a gateway that falls behind is
    charged for the wait (no coordinated omission).
    """
    tally = _Tally()
    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    for n in range(int(duration_s * rate)):
        due = started + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(tally.timed(call, since=due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return tally.latencies, tally.errors


def _summarise(
    scenario: str, protocol: str, concurrency: int, latencies: list[float], errors: int, elapsed: float
) -> Result:
    ordered = sorted(latencies) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Result(
        scenario=scenario,
        protocol=protocol,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        p50_ms=round(statistics.median(ordered) * 1000, 3),
        p99_ms=round(p99 * 1000, 3),
        rps=round(len(latencies) / elapsed, 1),
    )


async def measure(
    scenario: str,
    protocol: str,
    target: str,
    model: str,
    concurrency: int,
    duration_s: float,
    pid: int | None,
    backend_pid: int | tuple[int, ...] | None = None,
    rate: float | None = None,
) -> Result:
    """One measurement; ``pid`` is the gateway (or proxy) whose CPU is counted, ``backend_pid`` the
    member backend's (or the sum over several, where each member has a process of its own).

    With ``rate``, requests are sent open loop at that many per second (``concurrency`` is then
    only the client's connection limit) instead of by ``concurrency`` clients in a closed loop.
    """
    backend_pids = (backend_pid,) if isinstance(backend_pid, int) else backend_pid or ()
    x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32)
    if protocol == "grpc":
        channel = grpc.aio.insecure_channel(target)
        stub = PredictionServiceStub(channel)
        request = PredictRequest()
        request.model_spec.name = model
        request.inputs["x"].CopyFrom(to_tensor_proto(x))

        async def call() -> None:
            await stub.Predict(request, timeout=10)

        closer: Callable[[], Awaitable[None]] = channel.close
    elif aiohttp is not None:
        # aiohttp's client costs a fraction of httpx's CPU per request; with httpx the load
        # generator itself saturates a core at concurrency 64 and caps REST throughput.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        url = f"{target}/v1/models/{model}:predict"
        body = orjson.dumps({"instances": x.tolist()})
        headers = {"content-type": "application/json"}

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    raise RuntimeError(text[:200])

        closer = session.close
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx.AsyncClient(timeout=10, limits=limits)
        url = f"{target}/v1/models/{model}:predict"
        body = orjson.dumps({"instances": x.tolist()})
        headers = {"content-type": "application/json"}

        async def call() -> None:
            response = await client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(response.text)

        closer = client.aclose
    try:
        await _drive(call, concurrency, min(0.5, duration_s / 4))  # warm-up: channels, connections
        cpu_before = _cpu_seconds(pid) if pid else 0.0
        backend_before = sum(map(_cpu_seconds, backend_pids))
        client_before = time.process_time()
        started = time.perf_counter()
        if rate is None:
            latencies, errors = await _drive(call, concurrency, duration_s)
        else:
            latencies, errors = await _drive_at_rate(call, rate, duration_s)
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        cpu_after = _cpu_seconds(pid) if pid else 0.0
        backend_after = sum(map(_cpu_seconds, backend_pids))
    finally:
        await closer()
    result = _summarise(scenario, protocol, concurrency, latencies, errors, elapsed)
    if pid and latencies:
        result.gateway_cpu_ms_per_request = round((cpu_after - cpu_before) / len(latencies) * 1000, 3)
    if backend_pids and latencies:
        result.backend_cpu_ms_per_request = round((backend_after - backend_before) / len(latencies) * 1000, 3)
    if latencies:
        # The load generator shares the machine; where it nears a full core it is the bottleneck.
        result.client_cpu_ms_per_request = round(client_cpu / len(latencies) * 1000, 3)
    print(json.dumps(asdict(result)), flush=True)
    return result


@dataclass(frozen=True)
class Stack:
    """A running gateway and the backend process(es) that host its members."""

    gateway: subprocess.Popen[str]
    backends: tuple[subprocess.Popen[str], ...]
    """Every backend process: one for all members, or one per member."""
    rest_port: int
    grpc_port: int
    backend_port: int
    backend_rest_port: int

    @property
    def backend(self) -> subprocess.Popen[str]:
        """The backend of the first member (of every member, unless each has a process of its own)."""
        return self.backends[0]

    @property
    def backend_pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.backends)


@contextlib.contextmanager
def ensemble(
    workdir: Path,
    *,
    delay_ms: float = 0.0,
    batching: bool = False,
    members: int = MEMBERS,
    gpu_like: bool = False,
    max_inflight: int | None = None,
    workers: int = 1,
    own_processes: bool = False,
) -> Iterator[Stack]:
    """Members on one backend process (gRPC, and REST for the naive fan-out), and a gateway in front.

    ``gpu_like`` makes each member execute one call at a time at ``GPU_PER_CALL_MS`` plus
    ``GPU_PER_ROW_MS`` per row; ``workers`` is the gateway's ``--workers``; ``own_processes``
    gives each member a backend process of its own (as separate TF Serving deployments do).
    """
    weights = tuple([1.0 / members] * members)
    manifest = make_manifest(weights, name="bench", min_members=min(3, members))
    key = f"{delay_ms}-{batching}-{members}-{gpu_like}-{max_inflight}-{workers}-{own_processes}"
    path = workdir / f"bench-{key}.json"
    manifest.save(path)
    backend_port, rest_port, grpc_port, backend_rest = free_port(), free_port(), free_port(), free_port()
    execution = (
        {"per_call_ms": GPU_PER_CALL_MS, "per_row_ms": GPU_PER_ROW_MS, "serial": True} if gpu_like else {}
    )
    names = [m.name for m in manifest.members]
    groups = [[name] for name in names] if own_processes else [names]
    ports = [backend_port] + [free_port() for _ in groups[1:]]
    backends: list[subprocess.Popen[str]] = []
    gateway = None
    try:
        for group, port in zip(groups, ports, strict=True):
            backends.append(
                start_fake_backend(
                    port,
                    group,
                    delay_ms=delay_ms,
                    rest_port=backend_rest if port == backend_port else 0,
                    **execution,  # type: ignore[arg-type]
                )
            )
        env = {
            "ENSEMBLE_BATCHING": "true" if batching else "false",
            "ENSEMBLE_MAX_DELAY_MS": str(DEFAULT_MAX_DELAY_MS),
            "ENSEMBLE_MAX_BATCH_SIZE": "64",
            "ENSEMBLE_MEMBER_DEADLINE_S": "5",
            "ENSEMBLE_REQUEST_DEADLINE_S": "10",
            "ENSEMBLE_WORKERS": str(workers),
        }
        if max_inflight is not None:
            env["ENSEMBLE_MAX_INFLIGHT_BATCHES"] = str(max_inflight)
        addresses = {
            name: f"127.0.0.1:{port}" for group, port in zip(groups, ports, strict=True) for name in group
        }
        gateway = start_process(
            gateway_args(path, addresses, rest_port, grpc_port),
            ready="workers are serving" if workers > 1 else GATEWAY_READY,
            env=gateway_env(env),
        )
        yield Stack(gateway, tuple(backends), rest_port, grpc_port, backend_port, backend_rest)
    finally:
        if gateway is not None:
            stop_process(gateway)
        for backend in backends:
            stop_process(backend)


PASSTHROUGH = "bare grpc.aio pass-through (floor)"


@contextlib.contextmanager
def passthrough(backend_port: int, members: list[str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """bench/passthrough.py in front of ``members``; yields (process, gRPC port)."""
    port = free_port()
    proc = start_process(
        [
            str(Path(__file__).with_name("passthrough.py")),
            "--port",
            str(port),
            "--backend",
            f"127.0.0.1:{backend_port}",
            "--members",
            ",".join(members),
        ]
    )
    try:
        yield proc, port
    finally:
        stop_process(proc)


NAIVE = "naive fan-out (FastAPI + httpx, REST members)"


@contextlib.contextmanager
def naive_fanout(backend_rest_port: int, members: list[str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """bench/naive_fanout.py in front of ``members``' REST API; yields (process, REST port)."""
    port = free_port()
    urls = ",".join(f"http://127.0.0.1:{backend_rest_port}/v1/models/{m}" for m in members)
    proc = start_process(
        [str(Path(__file__).with_name("naive_fanout.py")), "--port", str(port), "--members", urls]
    )
    try:
        _wait_listening(port)
        yield proc, port
    finally:
        stop_process(proc)


def _wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


async def run_all(duration_s: float) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with ensemble(workdir) as stack:
            backend_pid = stack.backend.pid
            for concurrency in (1, 32):
                results.append(
                    await measure(
                        "direct, 1 member", "grpc", f"127.0.0.1:{stack.backend_port}", "bench-m0",
                        concurrency, duration_s, None, backend_pid,
                    )
                )  # fmt: skip
                for protocol, target in (
                    ("grpc", f"127.0.0.1:{stack.grpc_port}"),
                    ("rest", f"http://127.0.0.1:{stack.rest_port}"),
                ):
                    results.append(
                        await measure(
                            f"gateway, {MEMBERS} members", protocol, target, "bench",
                            concurrency, duration_s, stack.gateway.pid, backend_pid,
                        )
                    )  # fmt: skip
            # What a user would write instead, on the same members (their REST API).
            names = [f"bench-m{i}" for i in range(MEMBERS)]
            with naive_fanout(stack.backend_rest_port, names) as (naive, naive_port):
                for concurrency in (1, 32):
                    results.append(
                        await measure(
                            NAIVE, "rest", f"http://127.0.0.1:{naive_port}", "bench", concurrency,
                            duration_s, naive.pid, backend_pid,
                        )
                    )  # fmt: skip
            # The floor: what grpc.aio alone costs for one call in and N calls out.
            for count in (1, MEMBERS):
                names = [f"bench-m{i}" for i in range(count)]
                with passthrough(stack.backend_port, names) as (proxy, proxy_port):
                    results.append(
                        await measure(
                            f"{PASSTHROUGH}, {count} member{'s' if count > 1 else ''}", "grpc",
                            f"127.0.0.1:{proxy_port}", "bench", 1, duration_s, proxy.pid, backend_pid,
                        )
                    )  # fmt: skip
        with ensemble(workdir, members=1) as stack:
            results.append(
                await measure(
                    "gateway, 1 member", "grpc", f"127.0.0.1:{stack.grpc_port}", "bench", 1,
                    duration_s, stack.gateway.pid, stack.backend.pid,
                )
            )  # fmt: skip
        # Target 2: members that sleep 20 ms, each in a process of its own.
        with ensemble(workdir, delay_ms=20.0, own_processes=True) as stack:
            results.append(
                await measure(
                    "direct, 1 member with 20 ms", "grpc", f"127.0.0.1:{stack.backend_port}", "bench-m0",
                    1, duration_s, None, stack.backend.pid,
                )
            )  # fmt: skip
            for concurrency in (1, 32):
                results.append(
                    await measure(
                        f"gateway, {MEMBERS} members with 20 ms each", "grpc",
                        f"127.0.0.1:{stack.grpc_port}", "bench", concurrency, duration_s,
                        stack.gateway.pid, stack.backend_pids,
                    )
                )  # fmt: skip
        for gpu_like, batching, max_inflight in BATCHING_RUNS:
            with ensemble(workdir, batching=batching, gpu_like=gpu_like, max_inflight=max_inflight) as stack:
                for protocol, target in (
                    ("grpc", f"127.0.0.1:{stack.grpc_port}"),
                    ("rest", f"http://127.0.0.1:{stack.rest_port}"),
                ):
                    before = _batch_totals(stack.rest_port)
                    result = await measure(
                        _batching_scenario(batching, gpu_like, max_inflight), protocol, target,
                        "bench", 64, duration_s, stack.gateway.pid, stack.backend.pid,
                    )  # fmt: skip
                    after = _batch_totals(stack.rest_port)
                    if batching and after[1] > before[1]:
                        result.requests_per_batch = round((after[0] - before[0]) / (after[1] - before[1]), 2)
                    results.append(result)
        # More cores: the same members, batching off, through 2 gateway workers. GPU-like members
        # that execute one call at a time cap the ensemble near 1000 / GPU_PER_CALL_MS req/s, however
        # many workers; plain members leave the gateway's own CPU as the limit.
        for gpu_like in (True, False):
            with ensemble(workdir, gpu_like=gpu_like, workers=2) as stack:
                for protocol, target in (
                    ("grpc", f"127.0.0.1:{stack.grpc_port}"),
                    ("rest", f"http://127.0.0.1:{stack.rest_port}"),
                ):
                    results.append(
                        await measure(
                            f"{_batching_scenario(False, gpu_like)}, 2 workers", protocol, target,
                            "bench", 64, duration_s, stack.gateway.pid, stack.backend.pid,
                        )
                    )  # fmt: skip
    return results


def _rest_client() -> str:
    return f"aiohttp {aiohttp.__version__}" if aiohttp is not None else f"httpx {httpx.__version__}"


def _client_share(result: Result) -> float:
    """How much of one core the load generator used during a measurement."""
    return (result.client_cpu_ms_per_request or 0.0) * result.rps / 1000


def _batching_scenario(batching: bool, gpu_like: bool, max_inflight: int | None = None) -> str:
    name = f"micro-batching {'on' if batching else 'off'}"
    if max_inflight == 0:
        name += " (no in-flight cap)"
    return f"{name}, GPU-like members" if gpu_like else name


def _batch_totals(rest_port: int) -> tuple[float, float]:
    """Requests and batches so far, from the gateway's own metrics."""
    text = httpx.get(f"http://127.0.0.1:{rest_port}/metrics", timeout=10).text
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in totals:
            if line.startswith(f"ensemble_batch_requests_{kind} "):
                totals[kind] = float(line.split()[1])
    return totals["sum"], totals["count"]


def machine() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _find(results: list[Result], scenario: str, protocol: str, concurrency: int) -> Result | None:
    for r in results:
        if r.scenario == scenario and r.protocol == protocol and r.concurrency == concurrency:
            return r
    return None


def markdown(results: list[Result], meta: dict[str, object]) -> str:
    lines = [
        f"# Gateway benchmark, {meta['date']}",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "  # type: ignore[index]
        f"(load generator, gateway and backends share them); Python {meta['machine']['python']}; "  # type: ignore[index]
        f"1-minute load average {meta['machine']['load_average_1m_at_start']} at the start"  # type: ignore[index]
        + _shared_note(meta),
        f"Requests carry {ROWS} row(s); members are numpy models behind TF Serving's gRPC API that "
        "answer at once, except in the GPU-like scenarios, where each model executes one call at a "
        f"time at {GPU_PER_CALL_MS:g} ms per call plus {GPU_PER_ROW_MS:g} ms per row. "
        f"REST load comes from {meta.get('rest_load_client', _rest_client())}; client CPU is the load "
        "generator's own CPU time per request.",
        "",
        "| scenario | protocol | concurrency | p50 ms | p99 ms | req/s | gateway CPU ms/req "
        "| backend CPU ms/req | client CPU ms/req | req/batch | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu, backend, client = (
            "" if value is None else f"{value:.3f}"
            for value in (
                r.gateway_cpu_ms_per_request,
                r.backend_cpu_ms_per_request,
                r.client_cpu_ms_per_request,
            )
        )
        per_batch = "" if r.requests_per_batch is None else f"{r.requests_per_batch:.2f}"
        lines.append(
            f"| {r.scenario} | {r.protocol} | {r.concurrency} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.rps:.0f} | {cpu} | {backend} | {client} | {per_batch} | {r.errors} |"
        )
    direct = _find(results, "direct, 1 member", "grpc", 1)
    single = _find(results, "gateway, 1 member", "grpc", 1)
    gateway = _find(results, f"gateway, {MEMBERS} members", "grpc", 1)
    slow = _find(results, f"gateway, {MEMBERS} members with 20 ms each", "grpc", 1)
    lines += ["", "## Against the targets", ""]
    lines += _issue_targets(results)
    if direct and gateway:
        lines.append(
            f"- Gateway overhead at concurrency 1 over gRPC (p50, 5 members vs 1 member direct): "
            f"{gateway.p50_ms - direct.p50_ms:+.2f} ms (the withdrawn target: at most 1 ms)."
        )
    if direct and single:
        lines.append(
            f"- The same with 1 member behind the gateway: {single.p50_ms - direct.p50_ms:+.2f} ms "
            "(the gateway's fixed cost; the rest is the cost of each extra member call)."
        )
    floor_1 = _find(results, f"{PASSTHROUGH}, 1 member", "grpc", 1)
    floor_n = _find(results, f"{PASSTHROUGH}, {MEMBERS} members", "grpc", 1)
    if direct and floor_1 and floor_n:
        lines.append(
            f"- The floor, a bare grpc.aio pass-through with no validation, combining or metrics "
            f"(bench/passthrough.py), on this machine: {floor_1.p50_ms - direct.p50_ms:+.2f} ms with "
            f"1 member and {floor_n.p50_ms - direct.p50_ms:+.2f} ms with {MEMBERS}, at "
            f"{floor_1.gateway_cpu_ms_per_request:.2f} / {floor_n.gateway_cpu_ms_per_request:.2f} ms "
            "of CPU per request. No gateway built on grpc.aio goes below it here."
        )
    if direct and gateway and direct.backend_cpu_ms_per_request and gateway.backend_cpu_ms_per_request:
        extra = gateway.backend_cpu_ms_per_request - direct.backend_cpu_ms_per_request
        lines.append(
            f"- The member backend's CPU per request: {direct.backend_cpu_ms_per_request:.2f} ms for the "
            f"direct call, {gateway.backend_cpu_ms_per_request:.2f} ms for the gateway's {MEMBERS} calls. "
            f"Those {extra:.2f} ms run on the same two cores, in one single-threaded backend process: "
            "a gateway that cost nothing would still add about that much here."
        )
    if gateway and floor_n:
        lines.append(
            f"- The gateway over that floor with {MEMBERS} members: "
            f"{gateway.p50_ms - floor_n.p50_ms:+.2f} ms p50, "
            f"{(gateway.gateway_cpu_ms_per_request or 0) - (floor_n.gateway_cpu_ms_per_request or 0):+.2f} "
            "ms of CPU per request (validation, decoding, combining, deadlines, breakers, metrics)."
        )
    if slow:
        lines.append(f"- 5 members with 20 ms each: ensemble p50 {slow.p50_ms:.1f} ms (target: near 20 ms).")
    plain = (
        "plain fake members, which answer at once and take any number of calls at a time: the "
        "backend is never the bottleneck, so this shows batching's effect on the gateway alone"
    )
    gpu = (
        f"GPU-like members: each executes one call at a time at {GPU_PER_CALL_MS:g} ms per call "
        f"plus {GPU_PER_ROW_MS:g} ms per row, as TF Serving on a GPU does; this is the case "
        "micro-batching is for"
    )
    no_cap = "; max_inflight_batches 0, so only max_delay_ms paces the batches"
    for gpu_like, max_inflight, backend in (
        (False, None, f"{plain}; default settings"),
        (False, 0, f"{plain}{no_cap}"),
        (True, None, f"{gpu}; default settings"),
        (True, 0, f"the same GPU-like members{no_cap}"),
    ):
        ratios = []
        for protocol in ("grpc", "rest"):
            off = _find(results, _batching_scenario(False, gpu_like), protocol, 64)
            on = _find(results, _batching_scenario(True, gpu_like, max_inflight), protocol, 64)
            if off and on:
                per_batch = (
                    f", {on.requests_per_batch:.2f} requests per batch" if on.requests_per_batch else ""
                )
                ratios.append(
                    f"{'gRPC' if protocol == 'grpc' else 'REST'} {on.rps:.0f} vs {off.rps:.0f} req/s "
                    f"= {on.rps / max(off.rps, 1e-9):.2f}x{per_batch}, load generator at "
                    f"{_client_share(off):.0%} / {_client_share(on):.0%} of a core"
                )
        if ratios:
            lines.append(
                f"- Micro-batching on vs off at concurrency 64 with {backend}: {'; '.join(ratios)} "
                "(target: at least 2x)."
            )
    return "\n".join(lines) + "\n"


def _shared_note(meta: dict[str, object]) -> str:
    """Say so when other work ran on the machine: a load above its cores makes every figure noisy."""
    host = meta["machine"]
    assert isinstance(host, dict)
    if float(host["load_average_1m_at_start"]) > float(host["cores"] or 1):
        return " (**shared machine**: other work was running, so latencies and ratios are noisy)."
    return "."


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _issue_targets(results: list[Result]) -> list[str]:
    """The four measured targets: overhead over the floor, slow members, the naive fan-out, workers."""
    lines = []
    gateway = _find(results, f"gateway, {MEMBERS} members", "grpc", 1)
    floor = _find(results, f"{PASSTHROUGH}, {MEMBERS} members", "grpc", 1)
    if gateway and floor:
        dp = gateway.p50_ms - floor.p50_ms
        dc = (gateway.gateway_cpu_ms_per_request or 0) - (floor.gateway_cpu_ms_per_request or 0)
        lines.append(
            f"- Target 1, overhead over the floor ({MEMBERS} members, gRPC, concurrency 1): "
            f"{dp:+.2f} ms p50 and {dc:+.2f} ms CPU per request over the bare pass-through "
            f"(target: at most +0.40 each): {_met(dp <= 0.4 and dc <= 0.4)}."
        )
    direct20 = _find(results, "direct, 1 member with 20 ms", "grpc", 1)
    slow = _find(results, f"gateway, {MEMBERS} members with 20 ms each", "grpc", 1)
    if direct20 and slow:
        ratio = slow.p50_ms / direct20.p50_ms
        lines.append(
            f"- Target 2, {MEMBERS} members of 20 ms (sleeping, a process each): ensemble p50 "
            f"{slow.p50_ms:.2f} ms vs {direct20.p50_ms:.2f} ms direct to one = {ratio:.3f}x "
            f"(target: at most 1.15x): {_met(ratio <= 1.15)}."
        )
    ours1, naive1 = _find(results, f"gateway, {MEMBERS} members", "rest", 1), _find(results, NAIVE, "rest", 1)
    ours32, naive32 = (
        _find(results, f"gateway, {MEMBERS} members", "rest", 32),
        _find(results, NAIVE, "rest", 32),
    )
    if ours1 and naive1 and ours32 and naive32:
        ratio = ours32.rps / max(naive32.rps, 1e-9)
        lines.append(
            f"- Target 3, against the naive fan-out on the same members (REST): p50 at concurrency 1 "
            f"{ours1.p50_ms:.2f} vs {naive1.p50_ms:.2f} ms ({_met(ours1.p50_ms < naive1.p50_ms)}); "
            f"throughput at concurrency 32 {ours32.rps:.0f} vs {naive32.rps:.0f} req/s = {ratio:.2f}x "
            f"(target: at least 2x, {_met(ratio >= 2)}); CPU per request at concurrency 32 "
            f"{ours32.gateway_cpu_ms_per_request:.2f} vs {naive32.gateway_cpu_ms_per_request:.2f} ms "
            "(the naive one also makes the members' REST side work: see backend CPU)."
        )
    for gpu_like, members in ((True, "GPU-like members"), (False, "plain members")):
        one = _batching_scenario(False, gpu_like)
        for protocol in ("grpc", "rest"):
            w1, w2 = _find(results, one, protocol, 64), _find(results, f"{one}, 2 workers", protocol, 64)
            if w1 and w2:
                ratio = w2.rps / max(w1.rps, 1e-9)
                lines.append(
                    f"- Target 4, 2 workers vs 1 ({protocol}, {members}, batching off, concurrency "
                    f"64): {w2.rps:.0f} vs {w1.rps:.0f} req/s = {ratio:.2f}x (target: at least 1.4x): "
                    f"{_met(ratio >= 1.4)}; load generator at {_client_share(w2):.0%} of a core."
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="1 second per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    host = machine()
    with runner:
        results = runner.run(run_all(duration))
    now = dt.datetime.now(dt.UTC)
    meta: dict[str, object] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": host,
        "duration_s": duration,
        "rows_per_request": ROWS,
        "members": MEMBERS,
        "rest_load_client": _rest_client(),
        "gpu_like_member": {"per_call_ms": GPU_PER_CALL_MS, "per_row_ms": GPU_PER_ROW_MS, "serial": True},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gateway-{now.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(
        json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    report = markdown(results, meta)
    stem.with_suffix(".md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
