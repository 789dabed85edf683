"""The readable summary of an assembled run: every member against the ensemble, on the test split."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def metric_columns(report: dict[str, Any]) -> list[str]:
    """Test metric keys in a stable order (per target when there are several)."""
    return [k for k in report["ensemble_served"] if k.startswith("test_")]


def ensemble_rows(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(report key, label, served) of each ensemble weighting evaluated on test, each once."""
    served = report["weights"]["served"]
    rows = [("ensemble_uniform", "ensemble, uniform", served == "uniform")]
    if served == "given":
        rows.append(("ensemble_served", "ensemble, given weights", True))
    elif "ensemble_learned" in report:
        label = f"ensemble, {report['weights_method']} weights"
        rows.append(("ensemble_learned", label, served == "learned"))
    return rows


def print_report(report: dict[str, Any], console: Console) -> None:
    """The table (members kept or dropped, with weights; each ensemble once), then why, in words."""
    columns = metric_columns(report)
    table = Table(title=f"Ensemble {report['ensemble']}: test split", title_justify="left")
    table.add_column("model")
    table.add_column("served")
    table.add_column("weight", justify="right")
    for key in columns:
        table.add_column(key.removeprefix("test_"), justify="right")

    def cells(metrics: dict[str, float]) -> list[str]:
        return [f"{metrics[k]:.4f}" if k in metrics else "-" for k in columns]

    for member in report["members"]:
        status = "kept" if member["kept"] else "[yellow]dropped[/]"
        weight = f"{member['weight']:.3f}" if member["kept"] else "-"
        table.add_row(f"{member['name']} (v{member['version']})", status, weight, *cells(member["metrics"]))
    table.add_section()
    for key, label, served in ensemble_rows(report):
        table.add_row(label, "[green]served[/]" if served else "", "", *cells(report[key]))
    console.print(table)
    kept = sum(1 for m in report["members"] if m["kept"])
    console.print(f"Serving {kept} of {len(report['members'])} members. Weights: {report['weights']['note']}")
    for member in report["members"]:
        if not member["kept"]:
            console.print(f"  dropped {member['name']}: {member['dropped_reason']}", highlight=False)
