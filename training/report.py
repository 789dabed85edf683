"""The readable summary of an assembled run: every member against the ensemble, on the test split."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from contracts.run_records import Report

LABEL_METRICS = ("accuracy", "nll", "auc")


def metric_columns(report: Report) -> list[str]:
    """Test metric keys in a stable order (per target when there are several); a multi-label
    target's per-label metrics go to :func:`label_rows` instead."""
    per_label = {key for rows in label_rows(report).values() for _, keys in rows for key in keys.values()}
    return [k for k in report.ensemble_served if k.startswith("test_") and k not in per_label]


def label_rows(report: Report) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per multi-label target: (label, {metric: report key}) per label, in output order."""
    several = len(report.outputs) > 1
    out: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for target, labels in report.labels.items():
        prefix = f"test_{target}_" if several else "test_"
        out[target] = [(label, {m: f"{prefix}{label}_{m}" for m in LABEL_METRICS}) for label in labels]
    return out


def ensemble_rows(report: Report) -> list[tuple[dict[str, float], str, bool]]:
    """(test metrics, label, served) of each ensemble weighting evaluated on test, each once."""
    served = report.weights.served
    rows = [(report.ensemble_uniform, "ensemble, uniform", served == "uniform")]
    if served == "given":
        rows.append((report.ensemble_served, "ensemble, given weights", True))
    elif report.ensemble_learned is not None:
        label = f"ensemble, {report.weights_method} weights"
        rows.append((report.ensemble_learned, label, served == "learned"))
    return rows


def print_report(report: Report, console: Console) -> None:
    """The table (members kept or dropped, with weights; each ensemble once), then why, in words."""
    columns = metric_columns(report)
    table = Table(title=f"Ensemble {report.ensemble}: test split", title_justify="left")
    table.add_column("model")
    table.add_column("served")
    table.add_column("weight", justify="right")
    for key in columns:
        table.add_column(key.removeprefix("test_"), justify="right")

    def cells(metrics: dict[str, float]) -> list[str]:
        return [f"{metrics[k]:.4f}" if k in metrics else "-" for k in columns]

    for member in report.members:
        status = "kept" if member.kept else "[yellow]dropped[/]"
        weight = f"{member.weight:.3f}" if member.kept else "-"
        table.add_row(f"{member.name} (v{member.version})", status, weight, *cells(member.metrics))
    table.add_section()
    for metrics, label, served in ensemble_rows(report):
        table.add_row(label, "[green]served[/]" if served else "", "", *cells(metrics))
    console.print(table)
    for target, rows in label_rows(report).items():
        console.print(_label_table(report, target, rows))
    kept = sum(1 for m in report.members if m.kept)
    console.print(f"Serving {kept} of {len(report.members)} members. Weights: {report.weights.note}")
    for member in report.members:
        if not member.kept:
            console.print(f"  dropped {member.name}: {member.dropped_reason}", highlight=False)


def _label_table(report: Report, target: str, rows: list[tuple[str, dict[str, str]]]) -> Table:
    """One row per label: the served ensemble's accuracy, NLL and AUC, and the kept members' NLL range."""
    table = Table(title=f"{target}: per label, test split (served ensemble)", title_justify="left")
    for column in ("label", "accuracy", "nll", "auc", "members' nll"):
        table.add_column(column, justify="left" if column == "label" else "right")
    served = report.ensemble_served
    kept = [m.metrics for m in report.members if m.kept]
    for label, keys in rows:
        cells = [f"{served[keys[m]]:.4f}" if keys[m] in served else "-" for m in LABEL_METRICS]
        member_nll = [float(m[keys["nll"]]) for m in kept if keys["nll"] in m]
        spread = f"{min(member_nll):.4f} to {max(member_nll):.4f}" if member_nll else "-"
        table.add_row(label, *cells, spread)
    return table
