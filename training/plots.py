"""Plots of a run (matplotlib, Agg): learning curves, reliability diagram, member vs ensemble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import reliability


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(histories: Mapping[str, Path], path: Path) -> None:
    """Training and validation loss per epoch, one colour per member."""
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
            ax.plot(history["epoch"] + 1, history["val_loss"], color=color, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (dashed: training, solid: validation)")
    ax.set_yscale("log")
    ax.set_title("Learning curves")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_diagram(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Accuracy against confidence per bin, for each (probabilities, labels) pair."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, (probabilities, labels) in curves.items():
        conf, acc, counts = reliability(probabilities, labels)
        filled = counts > 0
        ax.plot(conf[filled], acc[filled], marker="o", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability (test split)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_vs_actual(predictions: np.ndarray, actual: np.ndarray, path: Path) -> None:
    """The regression counterpart of a reliability diagram."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    actual = np.asarray(actual).reshape(-1)
    ax.scatter(actual, np.asarray(predictions).reshape(-1), s=10, alpha=0.6)
    low, high = float(actual.min()), float(actual.max())
    ax.plot([low, high], [low, high], color="grey", linestyle=":")
    ax.set_xlabel("actual")
    ax.set_ylabel("ensemble prediction")
    ax.set_title("Predicted vs actual (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def member_vs_ensemble(names: Sequence[str], values: Sequence[float], metric: str, path: Path) -> None:
    """One bar per member and per ensemble for one test metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 4.5))
    colors = ["C0" if not n.startswith("ensemble") else "C3" for n in names]
    ax.bar(range(len(names)), values, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel(metric)
    ax.set_title(f"Members vs ensemble: {metric} (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
