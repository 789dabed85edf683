"""Each fit control switched on from the config, seen where a user looks: the checkpoint's layers,
history.csv, TensorBoard's events, the served outputs; the checkpoint in plain Keras; a member
killed mid-run and resumed, its progress read through a pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.manifest import Manifest

pytestmark = pytest.mark.slow

SCHEDULED: dict[str, Any] = {
    "model": {"scaling": "minmax", "binary_head": "sigmoid"},
    "fit": {"schedule": "piecewise", "piecewise": [[0, 0.01], [2, 0.001]], "warmup_epochs": 1},
}
PLATEAU: dict[str, Any] = {
    "model": {"scaling": "none"},
    "fit": {
        "schedule": "plateau",
        "plateau": {"factor": 0.3, "patience": 1, "min_lr": 1e-5},
        "early_stopping": {"monitor": "val_accuracy", "min_delta": 0.001, "patience": 2, "mode": "max"},
    },
}


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two breast-cancer members: one min-max scaled with a sigmoid head and a piecewise schedule
    behind a warm-up, one unscaled on ReduceLROnPlateau stopping on val_accuracy."""
    from training.testing import train_tiny

    return train_tiny(
        tmp_path_factory.mktemp("controls"),
        "sklearn:breast_cancer",
        members=2,
        epochs=3,
        in_process=True,
        extra={"members.variants": [SCHEDULED, PLATEAU], "logging.histograms": 1},
    )


def _fit_rows_and_features(run: Path, index: int) -> tuple[Any, dict[str, np.ndarray]]:
    from contracts.run_layout import RunLayout
    from training.data import prepare
    from training.folds import member_rows
    from training.layout import load_config
    from training.member import member_seed

    config = load_config(RunLayout(run))
    dataset = prepare(config.data, config.seed)
    rows = member_rows(config, dataset, index, member_seed(config.seed, index))
    return dataset, dataset.features(rows.fit)


def test_scaling_is_in_the_model_and_fitted_on_the_training_rows(controlled: Path) -> None:
    import keras

    for index, low_high in ((0, (0.0, 1.0)), (1, None)):
        model = keras.models.load_model(controlled / "members" / f"m{index}" / "checkpoint.keras")
        _, fit_features = _fit_rows_and_features(controlled, index)
        scaled = keras.Model(model.inputs, model.get_layer("mean_radius_shift").output)
        values = np.asarray(scaled({k: v for k, v in fit_features.items()}))
        if low_high is None:  # scaling: none leaves the raw values
            np.testing.assert_allclose(values[:, 0], fit_features["mean_radius"][:, 0], rtol=1e-5)
        else:
            assert (values.min(), values.max()) == pytest.approx(low_high, abs=1e-5)


def test_history_and_tensorboard_show_the_rate_the_accuracy_and_histograms(controlled: Path) -> None:
    import tensorflow as tf

    history = pd.read_csv(controlled / "members" / "m0" / "history.csv")
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(history.columns)
    # warm-up ends on 0.01 at the last step of epoch 0; the piecewise rate drops at epoch 2
    assert history["learning_rate"].tolist() == pytest.approx([0.01, 0.01, 0.001], rel=1e-6)
    assert history["accuracy"].between(0, 1).all()
    plateau = pd.read_csv(controlled / "members" / "m1" / "history.csv")
    assert plateau["learning_rate"].iloc[0] == pytest.approx(2e-3, rel=1e-6)

    tags: set[str] = set()
    plugins: set[str] = set()
    for events in (controlled / "members" / "m0" / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.add(value.tag)
                plugins.add(value.metadata.plugin_data.plugin_name)
    assert {"epoch_learning_rate", "epoch_accuracy"} <= tags
    assert "histograms" in plugins
    assert any(tag.endswith("kernel/histogram") or "kernel" in tag for tag in tags)


def test_early_stopping_checkpoint_and_plateau_follow_the_config(tmp_path: Path) -> None:
    import keras

    from training.callbacks import fit_callbacks
    from training.config import FitConfig, LoggingConfig
    from training.progress import MemberProgress

    fit = FitConfig.model_validate(PLATEAU["fit"])
    callbacks = {
        type(c).__name__: c
        for c in fit_callbacks(fit, LoggingConfig(histograms=2), tmp_path, MemberProgress(0), 5)
    }
    stopping = callbacks["EarlyStopping"]
    assert (stopping.monitor, stopping.min_delta, stopping.patience) == ("val_accuracy", 0.001, 2)
    assert stopping.restore_best_weights
    checkpoint = callbacks["ModelCheckpoint"]
    assert (checkpoint.monitor, checkpoint.save_best_only) == ("val_accuracy", True)
    plateau = callbacks["ReduceLROnPlateau"]
    assert (plateau.monitor, plateau.factor, plateau.patience, plateau.min_lr) == (
        "val_accuracy",
        0.3,
        1,
        1e-5,
    )
    assert callbacks["TensorBoard"].histogram_freq == 2
    assert isinstance(stopping, keras.callbacks.EarlyStopping)


def test_sigmoid_head_is_one_unit_and_serves_two_probabilities(controlled: Path) -> None:
    import keras

    model = keras.models.load_model(controlled / "members" / "m0" / "checkpoint.keras")
    unit = model.get_layer("probabilities_sigmoid")
    assert (unit.units, unit.activation.__name__) == (1, "sigmoid")
    softmax = keras.models.load_model(controlled / "members" / "m1" / "checkpoint.keras")
    assert softmax.get_layer("probabilities").units == 2
    manifest = Manifest.load(controlled / "ensemble.json")
    (output,) = manifest.outputs
    assert (output.kind, output.shape) == ("probabilities", [-1, 2])
    with np.load(controlled / "members" / "m0" / "predictions.npz") as saved:
        served = saved["test/probabilities"]
    assert served.shape[1] == 2
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-6)
    report = json.loads((controlled / "report.json").read_text())
    assert report["ensemble_served"]["test_accuracy"] > 0.5


def test_checkpoint_loads_in_a_process_with_only_keras(controlled: Path, tmp_path: Path) -> None:
    """The checkpoint answers like the exported member, in a Python that never imports training/."""
    dataset, _ = _fit_rows_and_features(controlled, 0)
    rows = dataset.test_rows[:5]
    np.savez(tmp_path / "rows.npz", **dataset.features(rows))
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.models.load_model({str(controlled / 'members' / 'm0' / 'checkpoint.keras')!r})\n"
        f"rows = dict(np.load({str(tmp_path / 'rows.npz')!r}))\n"
        "out = model.predict(rows, verbose=0)['probabilities']\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'training'], 'training was imported'\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(controlled / "members" / "m0" / "predictions.npz") as saved:
        exported = saved["test/probabilities"][:5]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), exported, atol=1e-5)


def _member_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "train-member", "--out", str(out), "--index", "0", *extra]


@pytest.mark.timeout(600)
def test_a_killed_member_resumes_from_its_checkpoint_and_logs_each_epoch_to_a_pipe(tmp_path: Path) -> None:
    from training.prepare import prepare_run, resolve_config
    from training.testing import tiny_overrides

    out = tmp_path / "run"
    epochs = 40
    prepare_run(resolve_config(None, tiny_overrides("sklearn:digits", 1, epochs), None), out)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    member = out / "members" / "m0"
    first = subprocess.Popen(
        _member_command(out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert first.stdout is not None
    seen = []
    # The lines arrive while the member trains (flushed per epoch), not when it ends.
    for line in first.stdout:
        seen.append(line.strip())
        if line.startswith("member 0: epoch 4/40") and (member / "checkpoint.json").is_file():
            break
    first.send_signal(signal.SIGKILL)  # an eviction: no chance to clean up
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert seen[0].startswith("member 0: epoch 1/40 loss=")
    assert all(f" {key}=" in seen[0] for key in ("val_loss", "accuracy", "val_accuracy", "lr", "eta"))
    assert not (member / "member.json").exists()
    point = json.loads((member / "checkpoint.json").read_text())
    assert 1 <= point["epoch"] < epochs

    resumed = subprocess.run(
        _member_command(out, "--resume"), capture_output=True, text=True, env=env, timeout=500
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("member 0: epoch ")]
    assert lines[0].startswith(f"member 0: epoch {point['epoch'] + 1}/{epochs} ")
    record = json.loads((member / "member.json").read_text())
    assert record["epochs_trained"] == epochs
    history = pd.read_csv(member / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs))  # the epochs after the checkpoint, once
    again = subprocess.run(
        _member_command(out, "--resume"), capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0
    assert "member 0: already trained, nothing to resume" in again.stdout
