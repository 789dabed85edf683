"""Plots of a run (matplotlib, Agg): learning curves, reliability diagram, member vs ensemble."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import reliability_equal_count


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker


def learning_curves(
    histories: Mapping[str, Path],
    path: Path,
    *,
    dropped: Collection[str] = (),
    validated_on: str = "validation",
) -> None:
    """Training and validation loss per epoch, one colour per member; dropped members say so."""
    import pandas as pd

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, csv) in enumerate(histories.items()):
        if not csv.is_file():
            continue
        history = pd.read_csv(csv)
        color = f"C{i % 10}"
        if "loss" in history:
            ax.plot(history["epoch"] + 1, history["loss"], color=color, alpha=0.45, linestyle="--")
        if "val_loss" in history:
            label = f"{name} (dropped)" if name in dropped else name
            ax.plot(history["epoch"] + 1, history["val_loss"], color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (dashed: training, solid: {validated_on})")
    ax.set_yscale("log")
    ax.set_title("Learning curves")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_diagram(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "Reliability (test split)"
) -> None:
    """Accuracy against confidence in bins of equal row count, with the rows per confidence below.

    Equal-count bins keep every point on enough rows to mean something; the histogram under it
    shows where the rows are (most sit near confidence 1 for a good classifier, hence its log
    scale). The confidence axis starts at 1/k for k classes, the lowest a top probability can be.
    """
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    # The highest of k class probabilities is never below 1/k: the axis starts there (0.5 for a
    # binary target), so the bins are spread over the plot instead of packed into its right half.
    classes = max(np.asarray(p).shape[1] for p, _ in curves.values())
    low = np.floor(10.0 / classes) / 10.0
    ax.plot([low, 1], [low, 1], color="grey", linestyle=":", label="perfect calibration")
    edges = np.linspace(low, 1.0, 21)
    lowest = low
    for i, (name, (probabilities, labels)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        conf, acc, counts = reliability_equal_count(probabilities, labels)
        error = np.sqrt(np.clip(acc * (1 - acc), 0.0, None) / counts)
        ax.errorbar(
            conf,
            acc,
            yerr=error,
            marker="o",
            color=color,
            capsize=3,
            label=f"{name}: {len(counts)} bins of ~{int(np.median(counts))} rows",
        )
        lowest = min(lowest, float(np.min(acc - error)))
        hist.hist(
            np.asarray(probabilities).max(axis=1), bins=edges, histtype="step", color=color, linewidth=1.5
        )
    ax.set_ylabel("accuracy (±1 s.e.)")
    ax.set_xlim(low - 0.01, 1.01)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.02)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
    hist.set_yscale("log")  # most rows sit near confidence 1; the few elsewhere stay visible
    hist.yaxis.set_major_formatter(_ticker().FuncFormatter(lambda value, _: f"{value:g}"))
    hist.yaxis.set_minor_formatter(_ticker().NullFormatter())
    hist.set_xlabel("confidence (highest class probability)")
    hist.set_ylabel("test rows (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_vs_actual(
    predictions: np.ndarray, actual: np.ndarray, path: Path, title: str = "Predicted vs actual (test split)"
) -> None:
    """The regression counterpart of a reliability diagram."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    actual = np.asarray(actual).reshape(-1)
    ax.scatter(actual, np.asarray(predictions).reshape(-1), s=10, alpha=0.6)
    low, high = float(actual.min()), float(actual.max())
    ax.plot([low, high], [low, high], color="grey", linestyle=":")
    ax.set_xlabel("actual")
    ax.set_ylabel("ensemble prediction")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


Entry = tuple[str, float, str]
"""(label, value, role): role is 'member', 'dropped', 'ensemble' or 'served'."""

_STYLE = {
    "member": {"marker": "o", "color": "C0", "s": 45},
    "dropped": {"marker": "o", "facecolors": "none", "edgecolors": "grey", "s": 45},
    "ensemble": {"marker": "D", "color": "C3", "s": 50},
    "served": {"marker": "*", "color": "C2", "s": 160},
}


def member_vs_ensemble(entries: Sequence[Entry], metric: str, path: Path) -> None:
    """One dot per member and per ensemble, the y-axis zoomed to the values so differences show."""
    plt = _pyplot()
    labels = [
        {"dropped": f"{name}\n(dropped)", "served": f"{name}\n(served)"}.get(role, name)
        for name, _, role in entries
    ]
    values = np.array([value for _, value, _ in entries], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(entries) + 1.5), 5))
    positions = np.arange(len(entries))
    for role, style in _STYLE.items():
        chosen = [i for i, (_, _, r) in enumerate(entries) if r == role]
        if chosen:
            ax.scatter(positions[chosen], values[chosen], zorder=3, **style)
    for value, x in zip(values, positions, strict=True):
        ax.annotate(f"{value:.4f}", (x, value), xytext=(0, 8), textcoords="offset points", ha="center")
    served = [value for (_, value, role) in entries if role == "served"]
    if served:
        ax.axhline(served[0], color="C2", linestyle=":", linewidth=1, label="served ensemble")
        ax.legend(fontsize="small", loc="upper right")
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.15 or abs(high) * 0.05 or 0.05
    ax.set_ylim(low - pad, high + 1.5 * pad)  # room above for the value labels
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylabel(f"{metric} (lower is better; axis not from 0)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Members vs ensemble: {metric} (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
