"""Promotion trial at the shipped poll timings: promote, roll back, promote, roll back under steady load.

The production topology on 127.0.0.1 (:func:`bench.stack.promotion_stack`): a real
``mlflow server``, a 2-member ensemble of real Keras SavedModels, one ``ensemble backend`` per
member, one ``ensemble sync --watch`` sidecar per member repository and ``ensemble serve``
following ``champion``. Every poll is as k8s/ and docker-compose.yaml ship it: the sync every
10 s with the default grace (120 s) and ``--backend``; the backends reread ``models.config``
every 10 s; the gateway polls every 10 s with a 5 s request deadline and a 2 s member deadline.

Steady REST and gRPC load runs throughout; every request and every failure is counted. Per move
(``ensemble promote`` / ``ensemble rollback``, which move the alias in MLflow) it records the
time from the alias move to the first answer from the new version, the time until the old version
is pruned, and the failures in that move's window (target: zero).

    .venv/bin/python bench/promotion_trial.py      # writes bench/results/promotion-<date>.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gateway import machine  # bench/gateway.py, beside this script
from record import write_result  # bench/record.py
from stack import (
    Outcome,
    PollChain,
    PromotionStack,
    move_alias,
    promotion_stack,
    register_tiny_versions,
    run_load,
    run_mlflow_server,
    start_syncs,
    stop_syncs,
)

from registry.defaults import DEFAULT_SYNC_GRACE_S
from registry.sync import minimum_grace_s

REPO = Path(__file__).resolve().parents[1]
NAME = "trial"

# k8s/base/tf-serving/tf-serving.yaml (sync sidecar, TF Serving flags), k8s/base/gateway.env and
# docker-compose.yaml ship these; the grace is the sync's default, which they pass explicitly.
SHIPPED = PollChain(
    sync_interval_s=10.0,
    backend_config_poll_s=10.0,
    gateway_poll_s=10.0,
    request_deadline_s=5.0,
    member_deadline_s=2.0,
    grace_s=DEFAULT_SYNC_GRACE_S,
)
MOVES: list[tuple[list[str], int, int]] = [
    (["promote", NAME, "--version", "2", "--alias", "champion"], 2, 1),
    (["rollback", NAME, "--alias", "champion"], 1, 2),
    (["promote", NAME, "--version", "2", "--alias", "champion"], 2, 1),
    (["rollback", NAME, "--alias", "champion"], 1, 2),
]


def _log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _wrong_answers(outcomes: list[Outcome], expected: dict[int, np.ndarray]) -> int:
    """Answers that match neither version's offline answer for the version they claim."""
    wrong = 0
    for o in outcomes:
        if o.ok and (o.answer is None or not np.allclose(o.answer, expected[int(o.version)], atol=1e-5)):
            wrong += 1
    return wrong


async def _trial(stack: PromotionStack, per_worker_rps: float, settle_s: float) -> dict[str, object]:
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(stack, stop, outcomes, workers=2, per_worker_rps=per_worker_rps))
    moves: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        await asyncio.to_thread(start_syncs, stack)
        await asyncio.sleep(settle_s)
        for command, to, left in MOVES:
            before = len(outcomes)
            _log(f"ensemble {' '.join(command)} (to version {to})")
            move = await move_alias(stack, outcomes, command, to, left, timeout_s=SHIPPED.grace_s + 120)
            await asyncio.sleep(settle_s)  # the backends unload the pruned version under load
            window = outcomes[before:]
            failed = [o for o in window if not o.ok]
            moves.append(
                {
                    "command": "ensemble " + " ".join(command),
                    "to_version": to,
                    "alias_move_to_new_version_answering_s": round(move.answering_s, 2),
                    "alias_move_to_old_version_pruned_s": round(move.pruned_s, 2),
                    "old_version_on_disk_when_gateway_switched": move.old_on_disk_when_switched,
                    "requests": len(window),
                    "failures": len(failed),
                    "failure_kinds": dict(
                        collections.Counter(f"{o.protocol}: {o.error[:120]}" for o in failed)
                    ),
                }
            )
            _log(
                f"  version {to} answering {move.answering_s:.1f}s after the alias move; "
                f"version {left} pruned after {move.pruned_s:.1f}s; "
                f"{len(window)} requests, {len(failed)} failed"
            )
    finally:
        stop.set()
        await load
        await asyncio.to_thread(stop_syncs, stack)
    elapsed = time.monotonic() - started
    failed = [o for o in outcomes if not o.ok]
    return {
        "moves": moves,
        "requests": len(outcomes),
        "requests_by_protocol": dict(collections.Counter(o.protocol for o in outcomes)),
        "failures": len(failed),
        "failure_kinds": dict(collections.Counter(f"{o.protocol}: {o.error[:120]}" for o in failed)),
        "wrong_answers": _wrong_answers(outcomes, stack.expected),
        "answers_by_version": dict(collections.Counter(o.version for o in outcomes if o.ok)),
        "members_answered": dict(collections.Counter(o.members for o in outcomes if o.ok)),
        "duration_s": round(elapsed, 1),
        "request_rate_per_s": round(len(outcomes) / elapsed, 1),
    }


def markdown(result: dict[str, object], meta: dict[str, object]) -> str:
    chain = meta["settings"]
    assert isinstance(chain, dict)
    lines = [
        f"# Promotion trial at the shipped poll timings, {meta['date']}",
        "",
        f"Machine: {meta['machine']}. 1-minute load average {meta['load_average_start']} at the start, "
        f"{meta['load_average_end']} at the end"
        + (" (shared machine: other work ran beside the trial)." if meta["shared"] else "."),
        "",
        "Settings (as k8s/ and docker-compose.yaml ship them): "
        f"`ensemble sync --watch --interval {chain['sync_interval_s']:g} "
        f"--grace {chain['grace_s']:g} --backend`; "
        f"`ensemble backend --model_config_file_poll_wait_seconds={chain['backend_config_poll_s']:g}`; "
        f"gateway `ENSEMBLE_POLL_INTERVAL_S={chain['gateway_poll_s']:g}`, "
        f"`ENSEMBLE_REQUEST_DEADLINE_S={chain['request_deadline_s']:g}`, "
        f"`ENSEMBLE_MEMBER_DEADLINE_S={chain['member_deadline_s']:g}`. "
        f"The minimum grace for these polls (docs/registry.md) is {meta['minimum_grace_s']:g} s. "
        f"A real `mlflow server`, 2 members (real Keras SavedModels), each on its own backend with its "
        f"own sync sidecar; quorum 2 of 2, so one failed member call is a failed request. "
        f"Load: {meta['workers']} REST and {meta['workers']} gRPC clients at {meta['per_worker_rps']:g} "
        "requests/s each.",
        "",
        "| move | new version answering after the alias move (s) | old version pruned after (s) "
        "| old version on disk when the gateway switched | requests | failures |",
        "|---|---:|---:|---|---:|---:|",
    ]
    moves = result["moves"]
    assert isinstance(moves, list)
    for m in moves:
        lines.append(
            f"| `{m['command']}` | {m['alias_move_to_new_version_answering_s']} | "
            f"{m['alias_move_to_old_version_pruned_s']} | {m['old_version_on_disk_when_gateway_switched']} | "
            f"{m['requests']} | {m['failures']} |"
        )
    lines += [
        "",
        f"In all: {result['requests']} requests ({result['requests_by_protocol']}) "
        f"in {result['duration_s']} s "
        f"({result['request_rate_per_s']} per second), {result['failures']} failed, "
        f"{result['wrong_answers']} answers that differ from the offline answer of the version they report "
        f"(atol 1e-5). Answers by version: {result['answers_by_version']}; members answering: "
        f"{result['members_answered']}.",
    ]
    if result["failures"]:
        lines += ["", f"Failures: {result['failure_kinds']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--per-worker-rps", type=float, default=8.0, help="each of 2 REST and 2 gRPC clients")
    parser.add_argument(
        "--settle-s", type=float, default=15.0, help="load before the first move and after each"
    )
    args = parser.parse_args()
    if args.per_worker_rps <= 0 or args.settle_s < 0:
        parser.error("--per-worker-rps must be > 0 and --settle-s >= 0")
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="promotion-trial-") as tmp:
        root = Path(tmp)
        _log("starting mlflow server")
        with run_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as server:
            _log("exporting and registering 2 versions of a 2-member Keras ensemble")
            expected = register_tiny_versions(NAME, server.uri, root)
            _log("starting backends and the gateway")
            with promotion_stack(NAME, server.uri, root, SHIPPED, expected) as stack:
                _log("gateway ready; starting the sync sidecars and the load")
                result = asyncio.run(_trial(stack, args.per_worker_rps, args.settle_s))
    load_end = round(os.getloadavg()[0], 2)
    info = machine()
    cores = os.cpu_count() or 1
    meta: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{info['cpu']}, {cores} cores, Python {info['python']}",
        "load_average_start": load_start,
        "load_average_end": load_end,
        "shared": max(load_start, load_end) > cores,
        "settings": SHIPPED.__dict__,
        "minimum_grace_s": minimum_grace_s(
            sync_interval_s=SHIPPED.sync_interval_s,
            backend_config_poll_s=SHIPPED.backend_config_poll_s,
            load_s=5.0,
            gateway_poll_s=SHIPPED.gateway_poll_s,
            request_deadline_s=SHIPPED.request_deadline_s,
        ),
        "workers": 2,
        "per_worker_rps": args.per_worker_rps,
    }
    report = markdown(result, meta)
    write_result(args.out, "promotion", {**meta, **result}, report)
    print(report)


if __name__ == "__main__":
    main()
