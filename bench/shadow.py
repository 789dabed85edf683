"""Shadow benchmark: what shadowing every request to the challenger costs the champion's clients.

A registry-served ensemble (a real ``mlflow server``; champion and challenger are two versions of
3 members each, on member backends of their own: the numpy fake TF Serving of the gateway tests)
behind ``ensemble serve --config``. The traffic policy is edited between measurements, as an
operator would, so the same gateway process is measured with shadow off and at 100%; the two
alternate for ``rounds`` rounds and the medians are reported. At concurrency 1 and 32 (closed
loop), and at fixed request rates (open loop: a request is sent when it is due, whether or not the
earlier ones have answered), over REST: the champion's client-side p50 and p99, errors, and the
gateway's CPU per request (the shadow call and the comparison included).

Target: shadow adds at most 10% to the champion's p50 at concurrency 1; at 32 it may cost
throughput, never errors. The fixed rates show the same cost where the machine has headroom, as a
provisioned gateway does: at concurrency 1 every client waits for the last answer, so any CPU the
shadow takes on the shared cores lands on the next request.

    .venv/bin/python bench/shadow.py      # writes bench/results/shadow-<date>.{json,md}

:func:`run` is what ``bench/gateway.py`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml
from gateway import Result, machine, measure  # bench/gateway.py, beside this script
from record import write_result  # bench/record.py
from stack import run_mlflow_server, write_training_output

from serving.testing import free_port, make_manifest, start_fake_backend, start_process, stop_process

REPO = Path(__file__).resolve().parents[1]
NAME = "shadowbench"
PREFIXES = {1: NAME, 2: f"{NAME}-next"}  # each version's members are models of their own
MEMBERS = 3
CONCURRENCY = (1, 32)
RATES = (50.0, 100.0)
"""Open-loop request rates: about a third and two thirds of what concurrency 1 answers with shadow on."""
OPEN_LOOP_CONNECTIONS = 64
TARGET_P50_INCREASE = 0.10


def _register(tracking_uri: str, root: Path) -> dict[int, list[str]]:
    """Versions 1 (champion) and 2 (challenger) of the toy ensemble; each version's member names."""
    from registry.tracking import record_training

    toy = make_manifest((0.5, 0.3, 0.2), name=NAME)
    spec: dict[str, Any] = {
        "inputs": [t.model_dump() for t in toy.inputs],
        "outputs": [o.model_dump() for o in toy.outputs],
        "combiner": {"method": "weighted_mean", "min_members": MEMBERS},
    }
    members: dict[int, list[str]] = {}
    for version, prefix in PREFIXES.items():
        out = root / f"out-v{version}"
        manifest = write_training_output(
            out, NAME, members=MEMBERS, test_nll=0.3 - 0.1 * version, spec=spec, member_prefix=prefix
        )
        record_training(out, tracking_uri, register=True, alias="champion" if version == 1 else "challenger")
        members[version] = [m.name for m in manifest.members]
    return members


@contextlib.contextmanager
def _stack(root: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path, dict[str, Any]]]:
    """MLflow, one fake backend per version, and ``ensemble serve --config``; the gateway, its URL,
    its config file and the config document."""
    with run_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as server:
        members = _register(server.uri, root)
        ports = {version: free_port() for version in members}
        backends = [start_fake_backend(ports[v], names) for v, names in members.items()]
        rest_port = free_port()
        document: dict[str, Any] = {
            "tracking_uri": server.uri,
            "ensemble": NAME,
            "aliases": ["champion", "challenger"],
            "member_backends": {
                name: [f"127.0.0.1:{ports[version]}"] for version, names in members.items() for name in names
            },
            "poll_interval_s": 0.5,
            "rest_host": "127.0.0.1",
            "grpc_host": "127.0.0.1",
            "traffic": {NAME: {"shadow_fraction": 0.0, "shadow_concurrency": 64}},
        }
        config = root / "gateway.yaml"
        config.write_text(yaml.safe_dump(document))
        gateway = None
        try:
            gateway = start_process(
                ["-m", "cli", "serve", "--config", str(config), "--rest-port", str(rest_port),
                 "--grpc-port", str(free_port())],
                ready="serving ensemble",
                timeout_s=120,
            )  # fmt: skip
            yield gateway, f"http://127.0.0.1:{rest_port}", config, document
        finally:
            if gateway is not None:
                stop_process(gateway)
            for backend in backends:
                stop_process(backend)


def _shadow_counts(url: str) -> int:
    summary = httpx.get(f"{url}/v1/ensembles/{NAME}/comparison", timeout=10).json()
    shadow = summary["shadow"]
    return int(shadow["answered"] + shadow["failed"] + shadow["dropped"])


def _set_shadow(url: str, config: Path, document: dict[str, Any], fraction: float) -> None:
    """Edit the config file and wait until the gateway shadows (or stops shadowing) requests."""
    document["traffic"][NAME]["shadow_fraction"] = fraction
    config.write_text(yaml.safe_dump(document))
    deadline = time.monotonic() + 30
    while True:
        before = _shadow_counts(url)
        httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [[0.1, 0.2, 0.3, 0.4]]}, timeout=10)
        time.sleep(0.2)
        if (_shadow_counts(url) > before) == (fraction > 0):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway never applied shadow_fraction={fraction}")


def _median(results: list[Result], field: str) -> float:
    return round(statistics.median(float(getattr(r, field) or 0.0) for r in results), 3)


Load = tuple[str, float]
"""("concurrency", clients in a closed loop) or ("rate", requests per second, open loop)."""

LOADS: tuple[Load, ...] = (*(("concurrency", float(c)) for c in CONCURRENCY), *(("rate", r) for r in RATES))


def _load_name(load: Load) -> str:
    kind, value = load
    return f"concurrency {value:g}" if kind == "concurrency" else f"{value:g} req/s"


async def _measure(url: str, load: Load, fraction: float, duration_s: float, pid: int) -> Result:
    kind, value = load
    scenario = f"shadow {fraction:.0%}, {_load_name(load)}"
    if kind == "concurrency":
        return await measure(scenario, "rest", url, NAME, int(value), duration_s, pid)
    return await measure(scenario, "rest", url, NAME, OPEN_LOOP_CONNECTIONS, duration_s, pid, rate=value)


def run(duration_s: float = 10.0, rounds: int = 2) -> dict[str, Any]:
    """Measure shadow off and at 100%, alternating, at each load; the medians and the verdict."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp, _stack(Path(tmp)) as stack:
        gateway, url, config, document = stack
        for _ in range(rounds):
            for fraction in (0.0, 1.0):
                _set_shadow(url, config, document, fraction)
                for load in LOADS:
                    result = asyncio.run(_measure(url, load, fraction, duration_s, gateway.pid))
                    runs.append({"load": _load_name(load), "shadow_fraction": fraction, **asdict(result)})
        comparison = httpx.get(f"{url}/v1/ensembles/{NAME}/comparison", timeout=10).json()
    table: list[dict[str, Any]] = []
    for name in map(_load_name, LOADS):
        for fraction in (0.0, 1.0):
            chosen = [
                Result(**{k: v for k, v in r.items() if k not in ("load", "shadow_fraction")})
                for r in runs
                if r["load"] == name and r["shadow_fraction"] == fraction
            ]
            table.append(
                {
                    "load": name,
                    "shadow_fraction": fraction,
                    "requests": sum(r.requests for r in chosen),
                    "errors": sum(r.errors for r in chosen),
                    "p50_ms": _median(chosen, "p50_ms"),
                    "p99_ms": _median(chosen, "p99_ms"),
                    "rps": _median(chosen, "rps"),
                    "gateway_cpu_ms_per_request": _median(chosen, "gateway_cpu_ms_per_request"),
                }
            )
    by = {(row["load"], row["shadow_fraction"]): row for row in table}
    increases = {
        load: round(by[(load, 1.0)]["p50_ms"] / by[(load, 0.0)]["p50_ms"] - 1, 4)
        for load in map(_load_name, LOADS)
    }
    p50_increase = increases[_load_name(("concurrency", 1.0))]
    errors_32 = sum(by[(_load_name(("concurrency", 32.0)), f)]["errors"] for f in (0.0, 1.0))
    return {
        "table": table,
        "runs": runs,
        "p50_increase": increases,
        "p50_increase_at_c1": p50_increase,
        "p50_target_met": p50_increase <= TARGET_P50_INCREASE,
        "errors_at_c32": errors_32,
        "shadow": comparison["shadow"],
        "duration_s": duration_s,
        "rounds": rounds,
    }


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Shadow benchmark, {meta['date']}",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; "
        f"Python {meta['machine']['python']}; 1-minute load average {meta['load_average_start']} "
        f"at the start, {meta['load_average_end']} at the end"
        + (" (shared machine: other work ran beside the benchmark)." if meta["shared"] else "."),
        "",
        f"A registry-served ensemble of {MEMBERS} members per side (champion and challenger on fake "
        "member backends of their own), `ensemble serve --config`, REST with one row per request; "
        f"shadow switched by editing the config file. {result['rounds']} alternating rounds of "
        f"{result['duration_s']:g} s per "
        "cell; the medians of the rounds. The load generator, gateway and backends share the machine.",
        "",
        "| load | shadow | requests | errors | p50 ms | p99 ms | requests/s | gateway CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['load']} | {row['shadow_fraction']:.0%} | {row['requests']} | "
            f"{row['errors']} | {row['p50_ms']} | {row['p99_ms']} | {row['rps']} | "
            f"{row['gateway_cpu_ms_per_request']} |"
        )
    verdict = "met" if result["p50_target_met"] else "NOT met"
    lines += [
        "",
        f"Shadow at 100% changes the champion's p50 at concurrency 1 by {result['p50_increase_at_c1']:+.1%} "
        f"(target: at most +{TARGET_P50_INCREASE:.0%}: {verdict}); errors at concurrency 32: "
        f"{result['errors_at_c32']}. Shadow calls over the run: {result['shadow']}.",
        "",
        "The champion's p50 with shadow at 100% against without, at each load: "
        + "; ".join(f"{load} {change:+.1%}" for load, change in result["p50_increase"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on rounds")
    args = parser.parse_args()
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be > 0 and --rounds at least 1")
    load_start = round(os.getloadavg()[0], 2)
    result = run(args.duration, args.rounds)
    load_end = round(os.getloadavg()[0], 2)
    info = machine()
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "shared": max(load_start, load_end) > (os.cpu_count() or 1),
    }
    report = markdown(result, meta)
    write_result(args.out, "shadow", {**meta, **result}, report)
    print(report)


if __name__ == "__main__":
    main()
