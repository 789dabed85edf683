"""Benchmark: the search's samplers and pruner on one budget, and 1 vs 2 workers on one SQLite study.

Breast cancer, the same space and budget of trials for each: random, TPE, TPE with the median
pruner (one worker each), then TPE with the median pruner on two worker processes sharing one
SQLite study. Each search is the real thing, ``ensemble train-member`` processes asking the
study for their trials. For each: the best validation loss of the study, the wall time, and how
long it took to first reach random's best. Results go to ``bench/results/search-<date>.jsonl``
and ``.md`` with the machine and its load.

    .venv/bin/python bench/search.py [--trials 24] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import append_run, run_record  # noqa: E402
from bench.train import cores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = """\
    model.width: {choices: [8, 16, 32, 64]}
    model.depth: {low: 1, high: 3, integer: true}
    model.dropout: {low: 0.0, high: 0.5}
    fit.learning_rate: {low: 1.0e-5, high: 3.0e-2, log: true}
    fit.optimizer: {choices: [adam, sgd]}
"""


def _config(path: Path, trials: int, epochs: int, sampler: str, pruner: str) -> Path:
    path.write_text(
        f"name: bc-search\nseed: 11\ndata: {{source: 'sklearn:breast_cancer'}}\n"
        f"search:\n  trials: {trials}\n  keep: 4\n  sampler: {sampler}\n  pruner: {pruner}\n"
        f"  space:\n{SPACE}"
        f"members:\n  defaults:\n    fit: {{epochs: {epochs}, patience: {epochs}, batch_size: 64}}\n"
    )
    return path


def search(
    work: Path, label: str, trials: int, epochs: int, sampler: str, pruner: str, workers: int
) -> tuple[Any, float, float]:
    """Run one search to the end; its study and the wall time from the first process's start."""
    import optuna

    from training.prepare import prepare_run, resolve_config
    from training.study import storage_url, study_name

    out = work / label
    config = resolve_config(_config(work / f"{label}.yaml", trials, epochs, sampler, pruner), {}, None)
    prepare_run(config, out)
    threads = max(1, cores() // workers)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "ENSEMBLE_STUDY_STORAGE": ""}
    started = time.time()
    processes = []
    for worker in range(workers):
        command = [sys.executable, "-m", "cli", "train-member", "--out", str(out)]
        command += ["--threads", str(threads)]
        for index in range(worker, trials, workers):
            command += ["--index", str(index)]
        log = (work / f"{label}-worker{worker}.log").open("w")
        processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"{label}: a worker failed, see {work}/{label}-worker*.log")
    wall = time.time() - started
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, out))
    return study, started, wall


def _time_to_reach(study: Any, started: float, target: float) -> float | None:
    """Seconds from the start until a finished trial first reached ``target`` (None: never)."""
    done = [t for t in study.trials if t.value is not None and t.datetime_complete is not None]
    hits = [t.datetime_complete for t in done if t.value <= target]
    if not hits:
        return None
    return float(min(hits).timestamp()) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    runs = [
        ("random", "random", "none", 1),
        ("tpe", "tpe", "none", 1),
        ("tpe+median", "tpe", "median", 1),
        ("tpe+median, 2 workers", "tpe", "median", 2),
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        results = []
        for number, (label, sampler, pruner, workers) in enumerate(runs, 1):
            print(f"[{number}/{len(runs)}] {label}: {args.trials} trials ...", flush=True)
            study, started, wall = search(
                work, f"run{number}", args.trials, args.epochs, sampler, pruner, workers
            )
            results.append((label, sampler, pruner, workers, study, started, wall))
            print(f"    best val_loss {study.best_value:.4f} in {wall:.0f}s", flush=True)
        target = results[0][4].best_value  # random's best
        for label, sampler, pruner, workers, study, started, wall in results:
            states = [t.state.name for t in study.trials]
            reach = _time_to_reach(study, started, target)
            rows.append(
                {
                    "search": label,
                    "sampler": sampler,
                    "pruner": pruner,
                    "workers": workers,
                    "trials": len(study.trials),
                    "pruned": states.count("PRUNED"),
                    "failed": states.count("FAIL"),
                    "best_val_loss": round(float(study.best_value), 5),
                    "wall_seconds": round(wall, 1),
                    "seconds_to_random_best": None if reach is None else round(reach, 1),
                }
            )
    held = _target_held(rows)
    record = run_record(
        f"search: {args.trials} trials, {args.epochs} epochs, breast cancer",
        trials=args.trials,
        epochs=args.epochs,
        runs=rows,
        target_held=held,
    )
    table = [
        "| search | workers | trials | pruned | best val_loss | wall (s) | time to random's best (s) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['search']} | {r['workers']} | {r['trials']} | {r['pruned']} | {r['best_val_loss']:.4f} | "
            f"{r['wall_seconds']:.0f} | {_seconds(r['seconds_to_random_best'])} |"
            for r in rows
        ),
        "",
        "Target (TPE with the median pruner first reaches random's best sooner than random does): "
        f"{'held' if held else 'not met'}.",
    ]
    title = [
        "# Search benchmark",
        "",
        "`bench/search.py`: random vs TPE vs TPE with the median pruner on one budget of trials, and "
        "1 vs 2 worker processes on one SQLite study. Wall times include each process's TensorFlow "
        "import and every member's export.",
    ]
    append_run(RESULTS, "search", record, title, table)
    print("\n".join(table))
    print(f"recorded under {RESULTS} ({datetime.now():%Y-%m-%d})")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _target_held(rows: list[dict[str, Any]]) -> bool:
    """TPE with the median pruner first reached random's best sooner than random itself did."""
    random_time = rows[0]["seconds_to_random_best"]
    pruned = rows[2]["seconds_to_random_best"]
    return pruned is not None and pruned < random_time


if __name__ == "__main__":
    main()
