"""Fit controls from the config: validation, the learning rate per step, the monitors a fit logs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import FitConfig, TrainConfig, load_config
from training.controls import check_controls, logged_metrics, scheduled_rate
from training.data import Target
from training.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


FIT = "members:\n  defaults:\n    fit:\n"


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        ("      schedule: piecewise\n", "needs a `piecewise` list"),
        ("      piecewise: [[0, 0.01]]\n", "piecewise applies to schedule: piecewise (schedule is cosine)"),
        (
            "      schedule: piecewise\n      piecewise: [[0, 0.01], [0, 0.001]]\n",
            "must start at 0 or later and increase",
        ),
        ("      schedule: piecewise\n      piecewise: [[0, -1]]\n", "the rate from epoch 0 must be above 0"),
        ("      schedule: piecewise\n      piecewise: [[0]]\n", "members.defaults.fit.piecewise.0"),
        ("      plateau: {factor: 0.2}\n", "plateau applies to schedule: plateau (schedule is cosine)"),
        ("      schedule: plateau\n      plateau: {factor: 1.5}\n", "plateau.factor"),
        ("      epochs: 5\n      warmup_epochs: 5\n", "warmup_epochs (5) must be fewer than epochs (5)"),
        ("      early_stopping: {monitor: val_f1}\n", "early_stopping.monitor: String should match pattern"),
        ("      early_stopping: {mode: up}\n", "early_stopping.mode"),
        ("      early_stopping: {min_delta: -1}\n", "early_stopping.min_delta"),
    ],
)
def test_bad_controls_are_one_line(tmp_path: Path, fit: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, FIT + fit))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("members:\n  defaults:\n    model: {scaling: robust}\n", "model.scaling"),
        ("members:\n  defaults:\n    model: {binary_head: logistic}\n", "model.binary_head"),
        ("logging: {histograms: -1}\n", "logging.histograms"),
        ("logging: {every: 0}\n", "logging.every"),
    ],
)
def test_bad_model_and_logging_settings_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)


def test_defaults_are_todays() -> None:
    member = TrainConfig().members.defaults
    assert (member.model.scaling, member.model.binary_head) == ("standard", "softmax2")
    fit = member.fit
    assert (fit.early_stopping.monitor, fit.early_stopping.min_delta, fit.early_stopping.mode) == (
        "val_loss",
        0.0,
        "auto",
    )
    assert fit.stopping_patience == fit.patience == 15
    assert (fit.schedule, fit.warmup_epochs, fit.piecewise) == ("cosine", 0, None)
    assert TrainConfig().logging.histograms == 0
    # fit.patience is still the early-stopping patience unless early_stopping sets its own
    fit = FitConfig.model_validate({"patience": 4})
    assert fit.stopping_patience == 4
    assert FitConfig.model_validate({"patience": 4, "early_stopping": {"patience": 9}}).stopping_patience == 9


def test_cosine_matches_keras_cosine_decay_and_step_decays() -> None:
    fit = FitConfig(learning_rate=0.01, epochs=10)
    assert scheduled_rate(fit, 0, 0, 5) == pytest.approx(0.01)
    assert scheduled_rate(fit, 5, 0, 5) == pytest.approx(0.01 * (0.95 * 0.5 + 0.05))
    assert scheduled_rate(fit, 10, 0, 5) == pytest.approx(0.0005)
    step = FitConfig(learning_rate=0.01, schedule="step", decay_rate=0.5, decay_epochs=2)
    assert [scheduled_rate(step, e, 0, 3) for e in (0, 1, 2, 4)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    expo = FitConfig(learning_rate=0.01, schedule="exponential", decay_rate=0.5, decay_epochs=2)
    assert scheduled_rate(expo, 1, 0, 3) == pytest.approx(0.01 * 0.5**0.5)


def test_piecewise_and_warm_up() -> None:
    fit = FitConfig(learning_rate=0.1, schedule="piecewise", piecewise=[(1, 0.01), (3, 0.001)])
    assert [scheduled_rate(fit, e, 0, 4) for e in range(5)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])
    warm = fit.model_copy(update={"warmup_epochs": 2})
    # two epochs of 4 steps: the ramp reaches 1 at the last warm-up step, on top of the schedule
    ramp = [scheduled_rate(warm, e, b, 4) for e in (0, 1) for b in range(4)]
    assert ramp == pytest.approx(
        [0.1 * 1 / 8, 0.1 * 2 / 8, 0.1 * 3 / 8, 0.1 * 4 / 8, *(0.01 * k / 8 for k in (5, 6, 7, 8))]
    )
    assert scheduled_rate(warm, 2, 0, 4) == pytest.approx(0.01)
    constant = FitConfig(learning_rate=0.1, schedule="none", warmup_epochs=1)
    assert scheduled_rate(constant, 0, 1, 2) == pytest.approx(0.1)
    assert math.isclose(scheduled_rate(constant, 0, 0, 2), 0.05)


class _Data:
    """The part of a Dataset the monitor check reads."""

    def __init__(self, *targets: Target) -> None:
        self.targets = list(targets)

    def output_name(self, target: Target) -> str:
        return target.output_name if len(self.targets) == 1 else f"{target.name}_{target.output_name}"


def test_logged_metrics_name_what_keras_logs() -> None:
    one = _Data(Target("y", "classification", ["a", "b"]))
    assert logged_metrics(one) == ["loss", "accuracy", "val_loss", "val_accuracy"]  # type: ignore[arg-type]
    two = _Data(Target("kind", "classification", ["a", "b", "c"]), Target("price", "regression"))
    assert logged_metrics(two) == [  # type: ignore[arg-type]
        "loss",
        "kind_probabilities_loss",
        "kind_probabilities_accuracy",
        "price_predictions_loss",
        "val_loss",
        "val_kind_probabilities_loss",
        "val_kind_probabilities_accuracy",
        "val_price_predictions_loss",
    ]


def test_controls_that_do_not_fit_the_data() -> None:
    regression = _Data(Target("y", "regression"))
    config = TrainConfig.model_validate(
        {"members": {"defaults": {"fit": {"early_stopping": {"monitor": "val_accuracy"}}}}}
    )
    with pytest.raises(
        ConfigError, match=r"members.defaults.fit.early_stopping.monitor: 'val_accuracy' is not"
    ):
        check_controls(config, regression)  # type: ignore[arg-type]
    three = _Data(Target("y", "classification", ["a", "b", "c"]))
    sigmoid = TrainConfig.model_validate(
        {"members": {"variants": [{}, {"model": {"binary_head": "sigmoid"}}]}}
    )
    with pytest.raises(
        ConfigError, match=r"members.variants\[1\].model.binary_head: sigmoid needs a two-class"
    ):
        check_controls(sigmoid, three)  # type: ignore[arg-type]
    check_controls(sigmoid, _Data(Target("y", "classification", ["a", "b"])))  # type: ignore[arg-type]


def test_cli_rejects_an_unlogged_monitor_before_training(tmp_path: Path) -> None:
    config = _write(tmp_path, FIT + "      early_stopping: {monitor: val_accuracy}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "train",
            "--config",
            str(config),
            "--data",
            "sklearn:diabetes",
            "--out",
            str(tmp_path / "run"),
            "--no-track",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: members.defaults.fit.early_stopping.monitor: 'val_accuracy'")
    assert not (tmp_path / "run" / "members").exists()
