"""The readable summary of an assembled run: every member against the ensemble, on the test split."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def metric_columns(report: dict[str, Any]) -> list[str]:
    """Test metric keys in a stable order (per target when there are several)."""
    keys = [k for k in report["ensemble_uniform"] if k.startswith("test_")]
    return keys


def print_report(report: dict[str, Any], console: Console) -> None:
    columns = metric_columns(report)
    table = Table(title=f"Ensemble {report['ensemble']}: test split", title_justify="left")
    table.add_column("model")
    table.add_column("weight", justify="right")
    for key in columns:
        table.add_column(key.removeprefix("test_"), justify="right")

    def cells(metrics: dict[str, float]) -> list[str]:
        return [f"{metrics[k]:.4f}" if k in metrics else "-" for k in columns]

    for member in report["members"]:
        weight = f"{member['weight']:.3f}" if member["selected"] else "not kept"
        table.add_row(f"{member['name']} (v{member['version']})", weight, *cells(member["metrics"]))
    table.add_section()
    table.add_row("ensemble, uniform", "", *cells(report["ensemble_uniform"]))
    table.add_row(f"ensemble, {report['weights_method']}", "", *cells(report["ensemble_weighted"]))
    console.print(table)
