"""A benchmark run on record: which checkout, machine and load, appended to a file pair per day.

Benchmarks meant to compare two checkouts (run once on each, ``PYTHONPATH=<other checkout>``)
append every run to ``bench/results/<name>-<date>.jsonl`` and ``.md``, so the runs compared sit
side by side with the load each ran under.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def run_record(label: str, **results: Any) -> dict[str, Any]:
    """The record of one run: when, what was measured (label and commit), the machine and its load."""
    import serving

    # The code measured is wherever ``serving`` was imported from, not necessarily this checkout.
    measured = Path(serving.__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=measured, capture_output=True, text=True
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": label,
        "commit": commit.stdout.strip() or f"{measured} (not a git checkout)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **results,
    }


def append_run(out: Path, name: str, record: dict[str, Any], title: list[str], table: list[str]) -> None:
    """Append ``record`` to today's ``<name>`` files; ``title`` starts a new Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    with (out / f"{name}-{day}.jsonl").open("a") as sink:
        sink.write(json.dumps(record) + "\n")
    markdown = out / f"{name}-{day}.md"
    load = record["load_average"]
    lines = [] if markdown.exists() else title
    lines += [
        "",
        f"## {record['label']}",
        "",
        f"{record['date']}, commit {record['commit']}, {record['machine']['cores']} cores, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        + (" (shared machine: other work was running)" if load[0] > 1 else ""),
        "",
        *table,
    ]
    with markdown.open("a") as sink:
        sink.write("\n".join(lines) + "\n")


def write_result(out: Path, name: str, document: dict[str, Any], report: str) -> Path:
    """Write one run as ``<name>-<date>.json`` and ``.md`` (a later run that day replaces them)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{datetime.now(UTC):%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report)
    return stem
