"""Champion vs challenger benchmark: what the traffic controller costs the gateway's event loop.

Measured in-process, without backends, because these are costs the core pays on every request
whatever the members do: deciding a route, handing an answer and a shadow call to the controller
(recording the pair once the shadow answers), a shadow call dropped over the limit, and reading
the comparison (the JSON summary and a Prometheus scrape) with a full window. Outputs are 64-class
probabilities for 1 and 32 rows, with 5 members per side.

    .venv/bin/python bench/traffic.py     # writes bench/results/traffic-<date>.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gateway import machine  # bench/gateway.py, beside this script
from prometheus_client import CollectorRegistry, generate_latest

from contracts.manifest import OutputKind
from serving.traffic.comparison import MemberObservation, SideObservation
from serving.traffic.controller import TrafficController
from serving.traffic.policy import TrafficPolicy

REPO = Path(__file__).resolve().parents[1]

CLASSES = 64
MEMBERS = 5
SERVED = {"champion": 3, "challenger": 4}
KINDS: dict[str, OutputKind] = {"probabilities": "probabilities"}


def side(version: int, rows: int, rng: np.random.Generator) -> SideObservation:
    def probabilities() -> np.ndarray:
        return rng.dirichlet(np.ones(CLASSES), size=rows).astype(np.float32)

    members = [
        MemberObservation(f"digits-m{i}", version, 0.004, {"probabilities": probabilities()})
        for i in range(MEMBERS)
    ]
    return SideObservation(version, 0.01, {"probabilities": probabilities()}, KINDS, members=members)


def per_call_us(action: Callable[[], object], repeat: int) -> float:
    """Median over 5 runs of the CPU time of ``repeat`` calls, per call, in microseconds."""
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            action()
        runs.append((time.process_time() - started) / repeat * 1e6)
    return sorted(runs)[2]


async def measure(rows: int) -> dict[str, float]:
    rng = np.random.default_rng(rows)
    registry = CollectorRegistry()
    controller = TrafficController(
        {"digits": TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=10_000, window_requests=1000)},
        registry,
        rng=random.Random(0),
    )
    champion, challenger = side(3, rows, rng), side(4, rows, rng)
    headers = {"x-user-id": "user-42"}

    def decide() -> None:
        controller.route("digits", label=None, version=None, headers=headers, served=SERVED)

    shadows_run = 0

    async def shadow() -> SideObservation:
        nonlocal shadows_run
        shadows_run += 1
        return challenger

    decided = controller.route("digits", label=None, version=None, headers=None, served=SERVED)

    def answered() -> None:
        controller.answered("digits", decided, champion, shadow)

    # The shadow tasks run on the loop: time the hand-over and the background work together;
    # a shadow call that does not wait records its pair in the same task step that runs it.
    async def answered_and_recorded(repeat: int) -> float:
        nonlocal shadows_run
        shadows_run = 0
        started = time.process_time()
        for _ in range(repeat):
            answered()
        while shadows_run < repeat:
            await asyncio.sleep(0)
        return (time.process_time() - started) / repeat * 1e6

    result = {"route_us": per_call_us(decide, 20_000)}
    await answered_and_recorded(1000)  # fills the window
    runs = [await answered_and_recorded(1000) for _ in range(5)]
    result["answered_with_shadow_recorded_us"] = sorted(runs)[2]
    limited = TrafficController({"digits": TrafficPolicy(shadow_fraction=1.0, shadow_concurrency=1)})
    limited.answered("digits", decided, champion, shadow)  # the one slot is taken from here on
    result["answered_shadow_dropped_us"] = per_call_us(
        lambda: limited.answered("digits", decided, champion, shadow), 5000
    )
    result["summary_full_window_ms"] = per_call_us(lambda: controller.summary("digits"), 20) / 1000
    result["scrape_full_window_ms"] = per_call_us(lambda: generate_latest(registry), 20) / 1000
    result["window_requests"] = float(controller.summary("digits").window.requests)
    await controller.close()
    await limited.close()
    return result


def markdown(results: dict[int, dict[str, float]], meta: dict[str, object]) -> str:
    host = meta["machine"]
    assert isinstance(host, dict)
    lines = [
        f"# Traffic controller benchmark, {meta['date']}",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; Python {host['python']}; 1-minute load average "
        f"{host['load_average_1m_at_start']} at the start. In-process, no backends: {CLASSES}-class "
        f"probabilities, {MEMBERS} members per side, CPU time (median of 5 runs).",
        "",
        "| rows per request | route µs | answered + shadow recorded µs | answered, shadow dropped µs "
        "| summary of a full window ms | scrape of a full window ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, r in results.items():
        lines.append(
            f"| {rows} | {r['route_us']:.1f} | {r['answered_with_shadow_recorded_us']:.1f} "
            f"| {r['answered_shadow_dropped_us']:.1f} | {r['summary_full_window_ms']:.2f} "
            f"| {r['scrape_full_window_ms']:.2f} |"
        )
    load, cores = float(str(host["load_average_1m_at_start"])), int(str(host["cores"]))
    if load > cores / 2:
        lines += [
            "",
            f"The machine was shared: a load average of {load:g} on {cores} cores means other work "
            "ran beside this benchmark, so these CPU times are upper bounds and vary from run to run.",
        ]
    lines += [
        "",
        f"A full window holds {int(next(iter(results.values()))['window_requests'])} requests. "
        "The gateway's own CPU per 5-member request is about 3 ms (bench/results/gateway-2026-11-23.md).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    host = machine()
    results = {rows: asyncio.run(measure(rows)) for rows in (1, 32)}
    now = dt.datetime.now(dt.UTC)
    meta: dict[str, object] = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": host}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"traffic-{now.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    report = markdown(results, meta)
    stem.with_suffix(".md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
