"""Held-out metrics: accuracy, NLL, Brier and ECE for classifiers, accuracy, log-loss and AUC per
label for multi-label outputs, RMSE and MAE for regressors.

Pure numpy, so the same numbers come out of the report, the manifest and the unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PROBABILITY_FLOOR = 1e-12
ECE_BINS = 15


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, PROBABILITY_FLOOR, 1.0))))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of the squared distance between the probabilities and the one-hot truth."""
    probs = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and row count."""
    probs = np.asarray(probabilities, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf_sum / counts, acc_sum / counts, counts


def reliability_equal_count(
    probabilities: np.ndarray, labels: np.ndarray, min_rows: int = 15, max_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of (nearly) equal row count, by confidence: mean confidence, accuracy and row count.

    As many bins as give each at least ``min_rows`` rows (at most ``max_bins``, at least one), so no
    bin's accuracy rests on a handful of rows.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = int(np.clip(len(confidence) // min_rows, 1, max_bins))
    order = np.argsort(confidence, kind="stable")
    parts = [part for part in np.array_split(order, bins) if len(part)]
    return (
        np.array([confidence[part].mean() for part in parts]),
        np.array([correct[part].mean() for part in parts]),
        np.array([len(part) for part in parts], dtype=np.float64),
    )


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: count-weighted |accuracy - confidence| over confidence bins."""
    conf, acc, counts = reliability(probabilities, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(acc[filled] - conf[filled])) / counts.sum())


def rmse(predictions: np.ndarray, values: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64).reshape(-1) - np.asarray(
        values, dtype=np.float64
    ).reshape(-1)
    return float(np.sqrt(np.mean(diff**2)))


def mae(predictions: np.ndarray, values: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64).reshape(-1) - np.asarray(
        values, dtype=np.float64
    ).reshape(-1)
    return float(np.mean(np.abs(diff)))


def binary_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: the binary cross-entropy averaged over the labels (natural log), as Keras' loss."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    y = np.asarray(labels, dtype=np.float64).reshape(p.shape)
    return np.asarray(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p), axis=1), dtype=np.float64)


def multilabel_metrics(
    probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy (0.5 threshold) and NLL (binary cross-entropy) averaged over the labels, then each
    label's accuracy, NLL and ROC AUC (AUC only for a label whose rows hold both values)."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(p.shape)
    names = list(names) if names is not None else [str(i) for i in range(p.shape[1])]
    correct = (p >= 0.5) == (y >= 0.5)
    out = {"accuracy": float(np.mean(correct)), "nll": float(np.mean(binary_cross_entropy(p, y)))}
    for j, name in enumerate(names):
        out[f"{name}_accuracy"] = float(np.mean(correct[:, j]))
        out[f"{name}_nll"] = float(np.mean(binary_cross_entropy(p[:, j : j + 1], y[:, j : j + 1])))
        if len(np.unique(y[:, j])) == 2:
            out[f"{name}_auc"] = float(roc_auc_score(y[:, j], p[:, j]))
    return out


def output_metrics(
    kind: str, prediction: np.ndarray, truth: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, float]:
    """The metrics of one output: ``kind`` is 'probabilities', 'multilabel' or 'predictions';
    ``names`` names a multi-label output's columns."""
    if kind == "multilabel":
        return multilabel_metrics(prediction, truth, names)
    if kind == "probabilities":
        labels = np.asarray(truth, dtype=np.int64).reshape(-1)
        return {
            "accuracy": accuracy(prediction, labels),
            "nll": nll(prediction, labels),
            "brier": brier(prediction, labels),
            "ece": ece(prediction, labels),
        }
    return {"rmse": rmse(prediction, truth), "mae": mae(prediction, truth)}


def evaluate(
    outputs: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    output_targets: Sequence[tuple[str, str, str]],
    prefix: str,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Named metrics of one model or ensemble on one split.

    ``output_targets`` lists (output name, target name, kind). One target gives ``<prefix>_<metric>``;
    several give ``<prefix>_<target>_<metric>``. ``labels`` names each multi-label output's columns
    (``test_urgent_auc``).
    """
    several = len(output_targets) > 1
    result: dict[str, float] = {}
    for output, target, kind in output_targets:
        names = (labels or {}).get(output)
        for metric, value in output_metrics(kind, outputs[output], truth[output], names).items():
            key = f"{prefix}_{target}_{metric}" if several else f"{prefix}_{metric}"
            result[key] = value
    return result
