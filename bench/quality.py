"""Benchmark: is the served ensemble worth serving? Members vs uniform vs served, on held-out rows.

Trains ``ensemble train --members 5`` with the default settings on four bundled data sets, three
seeds each, and reads every run's report: the best and the mean member, the uniform average and
the served ensemble on the test split (NLL for classifiers, RMSE for regression), and how many
members are served. Variants (``--variant``) train the same runs with another way of validating,
so the default can be compared with what it replaced. Results go to
``bench/results/quality-<date>.json`` and ``.md`` with the machine, its load and the date.

    .venv/bin/python bench/quality.py                                # the default settings only
    .venv/bin/python bench/quality.py --variant default --variant folds=3 --variant holdout
    .venv/bin/python bench/quality.py --data sklearn:digits --seeds 0 --epochs 5   # a smoke test
    .venv/bin/python bench/quality.py --resume bench/results/quality-<date>.tmp   # after an interruption
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from train import cores, load_average, machine  # bench/train.py, beside this script

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results"
DATA = ("sklearn:breast_cancer", "sklearn:digits", "penguins", "sklearn:diabetes")
# What each variant changes in the default config.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "holdout": {"data": {"split": {"method": "holdout"}}},
}
# Targets of the issue: served within 1% of uniform, better than the mean member, 3 of 5 kept,
# better than the best member on at least half the data sets.
UNIFORM_SLACK = 0.01
MIN_SERVED = 3


def variant_config(name: str) -> dict[str, Any]:
    """The config overrides of a variant: a named one, or ``folds=K``."""
    if name.startswith("folds="):
        return {"data": {"split": {"folds": int(name.split("=", 1)[1])}}}
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}: use default, holdout or folds=K")
    return VARIANTS[name]


def train(out: Path, data: str, seed: int, members: int, config: dict[str, Any], args: Any) -> float:
    """One ``ensemble train`` run in its own process; returns its wall time."""
    import yaml

    config_file = out.with_suffix(".yaml")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(config or {}))
    command = [
        sys.executable, "-m", "cli", "train", "--config", str(config_file), "--data", data,
        "--members", str(members), "--seed", str(seed), "--workers", str(args.workers),
        "--out", str(out), "--no-track",
    ]  # fmt: skip
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def read_run(out: Path) -> dict[str, Any]:
    """The figures of one run from its report.json, on its first target's headline metric."""
    from contracts.run_layout import RunLayout, read_record
    from contracts.run_records import Report
    from training.assemble import primary_metric

    report = read_record(RunLayout(out).report, Report)
    metric = primary_metric(report)
    members = [m.metrics[metric] for m in report.members]
    learned = report.ensemble_learned
    return {
        "metric": metric,
        "members": members,
        "best_member": min(members),
        "mean_member": statistics.fmean(members),
        "uniform": report.ensemble_uniform[metric],
        "learned": learned[metric] if learned is not None else None,
        "served": report.ensemble_served[metric],
        "served_members": sum(1 for m in report.members if m.kept),
        "weights": [round(m.weight, 4) for m in report.members],
        "weights_served": report.weights.served,
        "weights_note": report.weights.note,
        "informative_rows": report.weights.informative_rows,
    }


def targets(run: dict[str, Any]) -> dict[str, bool]:
    return {
        "within_1pct_of_uniform": run["served"] <= run["uniform"] * (1 + UNIFORM_SLACK),
        "beats_mean_member": run["served"] < run["mean_member"],
        "serves_3_of_5": run["served_members"] >= MIN_SERVED,
        "beats_best_member": run["served"] < run["best_member"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and data set: means over the seeds, and which targets every run met."""
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        per_data: dict[str, Any] = {}
        for data in dict.fromkeys(r["data"] for r in runs):
            chosen = [r for r in runs if r["variant"] == variant and r["data"] == data]
            if not chosen:
                continue
            mean = {
                key: statistics.fmean(r[key] for r in chosen)
                for key in ("best_member", "mean_member", "uniform", "served")
            }
            per_data[data] = {
                "metric": chosen[0]["metric"],
                "seeds": [r["seed"] for r in chosen],
                **{f"mean_{k}": round(v, 4) for k, v in mean.items()},
                "served_members": [r["served_members"] for r in chosen],
                "all_runs": {k: all(targets(r)[k] for r in chosen) for k in targets(chosen[0])},
                "beats_best_member_on_mean": mean["served"] < mean["best_member"],
            }
        wins = sum(1 for d in per_data.values() if d["beats_best_member_on_mean"])
        out[variant] = {
            "data": per_data,
            "targets": {
                "served_within_1pct_of_uniform_every_run": all(
                    d["all_runs"]["within_1pct_of_uniform"] for d in per_data.values()
                ),
                "served_beats_mean_member_every_run": all(
                    d["all_runs"]["beats_mean_member"] for d in per_data.values()
                ),
                "serves_at_least_3_of_5_every_run": all(
                    d["all_runs"]["serves_3_of_5"] for d in per_data.values()
                ),
                "beats_best_member_on_half_the_data_sets": wins * 2 >= len(per_data),
                "data_sets_beating_best_member": f"{wins} of {len(per_data)}",
            },
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    loads = [r["load_before"][0] for r in result["runs"] if r["load_before"]]
    shared = max(loads, default=0.0) > machine["cores"]
    lines = [
        f"# Ensemble quality benchmark, {result['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}, "
        f"Python {machine['python']}, TensorFlow {machine['tensorflow']}; commit {result['commit']}.",
        f"1-minute load average before the runs: {min(loads, default=0):.2f} to {max(loads, default=0):.2f}"
        + (" (the machine was shared with other work)." if shared else "."),
        "",
        f"`ensemble train --data D --members {result['members']} --seed S` with the default settings"
        + (f" (and `--epochs {result['epochs']}`)" if result["epochs"] else "")
        + f", seeds {result['seeds']}. Test split; NLL for classifiers, RMSE for diabetes; lower is "
        "better. Means over the seeds.",
    ]
    for variant, summary in result["summary"].items():
        lines += [
            "",
            f"## Variant `{variant}`: {json.dumps(result['variants'][variant]) or 'default settings'}",
            "",
            "| data | metric | best member | mean member | uniform | served | members served |",
            "|---|---|--:|--:|--:|--:|--|",
        ]
        for data, row in summary["data"].items():
            lines.append(
                f"| {data} | {row['metric']} | {row['mean_best_member']:.4f} | {row['mean_mean_member']:.4f} "
                f"| {row['mean_uniform']:.4f} | {row['mean_served']:.4f} | {row['served_members']} |"
            )
        lines += ["", "Targets:", ""]
        lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in summary["targets"].items()]
    lines += [
        "",
        "## Every run",
        "",
        "| variant | data | seed | best | mean | uniform | learned | served | members | weights | seconds |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for r in result["runs"]:
        learned = f"{r['learned']:.4f}" if r["learned"] is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['data']} | {r['seed']} | {r['best_member']:.4f} | {r['mean_member']:.4f} "
            f"| {r['uniform']:.4f} | {learned} | {r['served']:.4f} | {r['served_members']} "
            f"| {r['weights_served']} | {r['wall_seconds']:.0f} |"
        )
    lines += ["", "Why each run's weights are what they are:", ""]
    lines += [f"- {r['variant']} {r['data']} seed {r['seed']}: {r['weights_note']}" for r in result["runs"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help=f"repeatable; default: {', '.join(DATA)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument(
        "--variant", action="append", help="default, holdout or folds=K; repeatable (default: default)"
    )
    parser.add_argument("--epochs", type=int, default=0, help="override the epochs (smoke tests only)")
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--resume", help="the .tmp progress file of an interrupted run of this benchmark")
    args = parser.parse_args()
    data_sets = args.data or list(DATA)
    variants = {name: variant_config(name) for name in (args.variant or ["default"])}

    # The code the runs use: taken before they start, so later edits cannot be mistaken for it.
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    # Each finished run is saved at once (a run takes minutes on a busy machine); --resume picks up
    # the runs of an interrupted benchmark of the same commit.
    started = datetime.now(UTC)
    progress = Path(args.resume) if args.resume else RESULTS / f"quality-{started:%Y%m%d-%H%M%S}.tmp"
    runs: list[dict[str, Any]] = []
    if args.resume:
        saved = json.loads(progress.read_text())
        if saved["commit"] != commit:
            raise SystemExit(f"error: {progress} is from commit {saved['commit']}, this is {commit}")
        runs = saved["runs"]
    done = {(r["variant"], r["data"], r["seed"]) for r in runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        for data in data_sets:
            for seed in args.seeds:
                for name, config in variants.items():  # interleaved, so load affects every variant alike
                    if (name, data, seed) in done:
                        continue
                    out = Path(tmp) / name.replace("=", "") / f"{data.replace(':', '-')}-s{seed}"
                    load_before = load_average()
                    seconds = train(out, data, seed, args.members, config, args)
                    run = {
                        "variant": name,
                        "data": data,
                        "seed": seed,
                        "wall_seconds": round(seconds, 1),
                        "load_before": load_before,
                        **read_run(out),
                    }
                    runs.append(run)
                    progress.write_text(json.dumps({"commit": commit, "runs": runs}, indent=1) + "\n")
                    print(
                        f"{name:>9} {data:<22} seed {seed}: best {run['best_member']:.4f}  "
                        f"mean {run['mean_member']:.4f}  uniform {run['uniform']:.4f}  "
                        f"served {run['served']:.4f} ({run['weights_served']}, "
                        f"{run['served_members']} members)  {seconds:.0f}s  load {load_before}",
                        flush=True,
                    )

    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "quality",
        "date": now.isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "machine": machine(),
        "members": args.members,
        "seeds": args.seeds,
        "epochs": args.epochs or None,
        "variants": variants,
        "runs": runs,
        "summary": summarise(runs),
    }
    stem = RESULTS / f"quality-{now:%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    stem.with_suffix(".md").write_text(text)
    progress.unlink(missing_ok=True)
    print(text)
    print(f"Recorded in {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
