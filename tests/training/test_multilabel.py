"""Multi-label targets: config and data refusals, the head and loss, the metrics, the out-of-fold loss
and the report, each on hand-computed numbers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from contracts.run_records import Report, SplitSummary
from training.config import DataConfig, load_config
from training.data import prepare
from training.errors import ConfigError, DataError
from training.metrics import binary_cross_entropy, multilabel_metrics
from training.oof import OutOfFold
from training.report import label_rows, metric_columns, print_report

REPO = Path(__file__).parents[2]
LABELS = ["urgent", "billing", "refund"]


def _tickets(rows: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "hour": rng.integers(0, 24, rows),
            "amount": rng.gamma(2.0, 30.0, rows),
            "channel": rng.choice(["email", "phone"], rows),
        }
    )
    for i, label in enumerate(LABELS):
        frame[label] = (rng.random(rows) < 0.3 + 0.2 * i).astype(int)
    return frame


def _csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "tickets.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "labels: {tags: [urgent]}",
            "data.labels.tags: a multi-label target needs at least 2 columns, got 1",
        ),
        ("labels: {tags: [urgent, billing]}\n  targets: [tags]", "'tags' is also in data.targets"),
        ("labels: {tags: [urgent, billing]}\n  targets: [urgent]", "column 'urgent' is also in data.targets"),
        (
            "labels: {tags: [urgent, billing]}\n  features: [hour, billing]",
            "column 'billing' is both a feature and a label",
        ),
        ("labels: {a: [urgent, billing], b: [billing, refund]}", "column 'billing' is also a label of 'a'"),
        ("task: {tags: multilabel}", "data.task.tags: multilabel needs its columns in data.labels.tags"),
        (
            "labels: {tags: [urgent, billing]}\n  task: {tags: classification}",
            "a target in data.labels is multilabel, not classification",
        ),
        ("labels: {tags: [urgent, billing]}\n  task: multilabel", "data.task: name the multi-label target"),
    ],
)
def test_label_sets_that_cannot_train_are_refused_in_one_line(
    tmp_path: Path, data: str, message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  {data}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_label_column_or_a_value_other_than_0_or_1_is_a_data_error(tmp_path: Path) -> None:
    frame = _tickets()
    with pytest.raises(DataError, match=r"data\.labels\.tags: column 'spam' not found; columns: hour"):
        prepare(DataConfig(source=_csv(tmp_path, frame), labels={"tags": ["urgent", "spam"]}), 0)
    frame.loc[5, "billing"] = 2
    with pytest.raises(DataError, match="column 'billing' must hold 0 or 1, found 2"):
        prepare(DataConfig(source=_csv(tmp_path, frame), labels={"tags": LABELS}), 0)
    frame["billing"] = frame["billing"].astype(object)
    frame.loc[5, "billing"] = "yes"
    with pytest.raises(DataError, match="column 'billing' must hold 0 or 1, found 'yes'"):
        prepare(DataConfig(source=_csv(tmp_path, frame), labels={"tags": LABELS}), 0)


def test_the_cli_refuses_bad_labels_with_exit_2_before_training(tmp_path: Path) -> None:
    frame = _tickets()
    frame.loc[3, "refund"] = 7
    source = _csv(tmp_path, frame)
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  source: {source}\n  labels: {{tags: [urgent, billing, refund]}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--config", str(config),
         "--out", str(tmp_path / "run"), "--no-track"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: data.labels.tags: column 'refund' must hold 0 or 1, found 7"
    ]
    assert not (tmp_path / "run" / "members").exists()


def test_a_label_set_is_one_target_whose_truth_is_a_0_1_matrix(tmp_path: Path) -> None:
    frame = _tickets()
    frame.loc[0, "urgent"] = None  # a row with a missing label is dropped like a missing target
    dataset = prepare(DataConfig(source=_csv(tmp_path, frame), labels={"tags": LABELS}), 0)
    (target,) = dataset.targets
    assert (target.name, target.task, target.classes, target.kind) == (
        "tags",
        "multilabel",
        LABELS,
        "multilabel",
    )
    assert {c for g in dataset.inputs for c in g.columns} == {"hour", "amount", "channel"}
    assert dataset.dropped_rows == 1
    truth = dataset.labels(dataset.test_rows)["probabilities"]
    assert truth.dtype == np.float32
    assert truth.shape == (len(dataset.test_rows), 3)
    expected = frame.drop(index=0).reset_index(drop=True).iloc[dataset.test_rows][LABELS].to_numpy()
    np.testing.assert_array_equal(truth, expected)
    assert dataset.summary(SplitSummary(method="holdout", fold_rows=[])).labels == {"tags": LABELS}
    assert dataset.label_names() == {"probabilities": LABELS}


def test_a_label_set_goes_next_to_other_targets(tmp_path: Path) -> None:
    frame = _tickets()
    frame["cost"] = frame["amount"] * 2.0
    config = DataConfig(source=_csv(tmp_path, frame), targets=["cost"], labels={"tags": LABELS})
    dataset = prepare(config, 0)
    assert [(t.name, t.kind) for t in dataset.targets] == [("cost", "predictions"), ("tags", "multilabel")]
    assert [dataset.output_name(t) for t in dataset.targets] == ["cost_predictions", "tags_probabilities"]
    assert {c for g in dataset.inputs for c in g.columns} == {"hour", "amount", "channel"}


def test_the_head_is_one_sigmoid_per_label_trained_with_binary_cross_entropy(tmp_path: Path) -> None:
    import keras

    from training.architectures import build_model, losses
    from training.config import ModelConfig

    numeric = _tickets().drop(columns="channel")  # string inputs need the fit's tf.data pipeline
    dataset = prepare(DataConfig(source=_csv(tmp_path, numeric), labels={"tags": LABELS}), 0)
    model = build_model(ModelConfig(width=8, depth=1), dataset, dataset.train_rows)
    head = model.get_layer("probabilities")
    assert isinstance(head, keras.layers.Dense)
    assert head.units == 3
    assert head.activation is keras.activations.sigmoid
    assert losses(dataset, {}, dataset.train_rows) == (
        {"probabilities": "binary_crossentropy"},
        {"probabilities": 1.0},
    )
    x = dataset.features(dataset.test_rows[:4])
    out = np.asarray(model.predict(x, verbose=0)["probabilities"])
    assert out.shape == (4, 3)
    assert not np.allclose(out.sum(axis=1), 1.0)  # independent probabilities, not a distribution


def test_binary_cross_entropy_and_the_per_label_metrics_by_hand() -> None:
    p = np.array([[0.9, 0.2], [0.4, 0.7]])
    y = np.array([[1, 0], [1, 1]])
    per_row = binary_cross_entropy(p, y)
    np.testing.assert_allclose(
        per_row, [-(math.log(0.9) + math.log(0.8)) / 2, -(math.log(0.4) + math.log(0.7)) / 2]
    )
    metrics = multilabel_metrics(p, y, ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(3 / 4)  # row 1 label a (0.4) is the only wrong decision
    assert metrics["nll"] == pytest.approx(float(per_row.mean()))
    assert metrics["a_accuracy"] == 0.5
    assert metrics["b_accuracy"] == 1.0
    assert metrics["a_nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    assert metrics["b_auc"] == 1.0  # 0.7 (a 1) ranks above 0.2 (a 0)
    assert "a_auc" not in metrics  # label a is 1 on every row: no AUC


def test_the_out_of_fold_loss_is_the_mean_binary_cross_entropy_over_labels() -> None:
    truth = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    first = np.array([[0.8, 0.1], [0.3, 0.6], [0.7, 0.9]])
    second = np.array([[0.6, 0.3], [0.1, 0.8], [0.9, 0.5]])
    rows = np.arange(3, dtype=np.int64)
    table = OutOfFold.build(
        [rows, rows],
        [{"probabilities": first}, {"probabilities": second}],
        lambda r: {"probabilities": truth[r]},
        {"probabilities": "multilabel"},
    )
    assert table.scales == {}
    combined = 0.75 * first + 0.25 * second
    expected = -np.mean(truth * np.log(combined) + (1 - truth) * np.log(1 - combined), axis=1)
    np.testing.assert_allclose(table.row_losses([3, 1]), expected)
    assert table.loss([3, 1]) == pytest.approx(float(expected.mean()))
    np.testing.assert_allclose(
        table.member_losses(),
        [binary_cross_entropy(first, truth).mean(), binary_cross_entropy(second, truth).mean()],
    )


def _report() -> Report:
    def metrics(base: float) -> dict[str, float]:
        out = {"test_accuracy": base, "test_nll": 1 - base}
        for i, label in enumerate(LABELS):
            out |= {f"test_{label}_accuracy": base + i / 100, f"test_{label}_nll": 1 - base - i / 100}
            out[f"test_{label}_auc"] = base
        return out

    member: dict[str, object] = {"version": 1, "fold": None, "kept": True, "weight": 0.5}
    member |= {"dropped_reason": None, "hyperparameters": {}, "epochs_trained": 3}
    weights = {"served": "uniform", "note": "uniform", "shrinkage": None, "out_of_fold_rows": 0}
    weights |= {"informative_rows": 0, "oof_loss_uniform": None, "oof_loss_learned": None, "learned": None}
    return Report.model_validate(
        {
            "ensemble": "tickets",
            "weights_method": "optimized",
            "searched": False,
            "split": {"method": "holdout", "folds": None},
            "weights": weights,
            "members": [
                {**member, "index": 0, "name": "tickets-m0", "metrics": metrics(0.6)},
                {**member, "index": 1, "name": "tickets-m1", "metrics": metrics(0.7)},
            ],
            "ensemble_served": metrics(0.8),
            "ensemble_uniform": metrics(0.8),
            "outputs": [["probabilities", "tags", "multilabel"]],
            "labels": {"tags": LABELS},
            "models_config": "models/models.config",
        }
    )


def test_the_report_gives_the_ensemble_and_members_overall_and_per_label() -> None:
    report = _report()
    assert metric_columns(report) == ["test_accuracy", "test_nll"]
    assert label_rows(report)["tags"][1] == (
        "billing",
        {"accuracy": "test_billing_accuracy", "nll": "test_billing_nll", "auc": "test_billing_auc"},
    )
    console = Console(record=True, width=140)
    print_report(report, console)
    text = console.export_text()
    assert "tags: per label, test split (served ensemble)" in text
    billing = next(line for line in text.splitlines() if "billing" in line)
    cells = [cell for cell in billing.split() if cell != "│"]
    assert cells == ["billing", "0.8100", "0.1900", "0.8000", "0.2900", "to", "0.3900"]


def test_a_multilabel_fit_logs_accuracy_and_auc_and_may_stop_on_them(tmp_path: Path) -> None:
    from training.controls import logged_metrics

    frame = _tickets()
    frame["cost"] = frame["amount"] * 2.0
    alone = prepare(DataConfig(source=_csv(tmp_path, frame), labels={"tags": LABELS}), 0)
    assert logged_metrics(alone) == ["loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"]
    both = prepare(DataConfig(source=_csv(tmp_path, frame), targets=["cost"], labels={"tags": LABELS}), 0)
    assert "val_tags_probabilities_auc" in logged_metrics(both)
    config = tmp_path / "config.yaml"
    config.write_text(
        "members:\n  defaults:\n    fit:\n      early_stopping: {monitor: val_tags_probabilities_auc}\n"
    )
    assert load_config(config).members.defaults.fit.early_stopping.monitor == "val_tags_probabilities_auc"
