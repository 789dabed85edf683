"""Benchmark: wall time of training N members with one worker process vs one per core, in one run.

Both runs train the same members (same config and seed, a fixed number of epochs: patience equals
epochs so early stopping cannot make one run do less work). Results go to
``bench/results/train-<date>.json`` and ``.md`` with the machine they ran on.

    .venv/bin/python bench/train.py [--members 4] [--epochs 20] [--data sklearn:digits]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """What the results record about the machine a benchmark ran on."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
    }


def train(out: Path, data: str, members: int, epochs: int, workers: int) -> float:
    config = out.with_suffix(".yaml")
    config.write_text(
        f"data: {{source: '{data}'}}\n"
        f"members:\n  count: {members}\n  defaults:\n    fit: {{epochs: {epochs}, patience: {epochs}}}\n"
    )
    command = [
        sys.executable, "-m", "cli", "train", "--config", str(config),
        "--workers", str(workers), "--out", str(out), "--no-track",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sklearn:digits")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=cores(), help="the parallel run's workers")
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternate the two runs this often; keep the best"
    )
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for workers in (1, args.workers):
                load_before = load_average()
                out = Path(tmp) / f"r{repeat}-w{workers}"
                seconds = train(out, args.data, args.members, args.epochs, workers)
                best[workers] = min(seconds, best.get(workers, seconds))
                runs.append(
                    {"workers": workers, "wall_seconds": round(seconds, 2), "load_before": load_before}
                )
                print(f"{args.members} members, {workers} worker(s): {seconds:.1f}s", flush=True)
    seconds_by_workers = [best[1], best[args.workers]]

    now = datetime.now(UTC)
    result = {
        "benchmark": "train",
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(),
        "data": args.data,
        "members": args.members,
        "epochs": args.epochs,
        "runs": runs,
        "speedup": round(seconds_by_workers[0] / seconds_by_workers[1], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"train-{now:%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    host = result["machine"]
    lines = [
        f"# Training benchmark, {result['date']}",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['platform']}, "
        f"Python {host['python']}, TensorFlow {host['tensorflow']}.",
        "",
        f"`ensemble train --data {args.data}`: {args.members} members, {args.epochs} epochs each "
        "(early stopping off), including data checks, export and assemble.",
        "",
        "| workers | wall time (s) | load average before (1/5/15 min) |",
        "|--:|--:|--|",
        *[f"| {r['workers']} | {r['wall_seconds']:.1f} | {r['load_before']} |" for r in runs],
        "",
        f"Speed-up with {args.workers} workers (best of {args.repeats}): {result['speedup']}x. "
        "Other work on the machine shows in the load average; it slows the parallel run most.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
