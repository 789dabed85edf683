"""The search's config, its shared Optuna study (samplers, pruners, heartbeats) and which trials are kept.

No TensorFlow here: trials are asked and told as a worker does, on a real SQLite study.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from contracts.run_layout import read_record
from contracts.run_records import MemberRecord, TrialRecord
from tests.contracts.samples import RUN_BEFORE
from training.config import TrainConfig, load_config
from training.errors import ConfigError
from training.search import pruned_reasons, start_trial, top_candidates
from training.search_config import ParamSpace
from training.study import ask, open_study, storage_url, study_name

ROOT = Path(__file__).resolve().parents[2]


def _config(**search: Any) -> TrainConfig:
    space = search.pop(
        "space",
        {
            "model.width": {"choices": [8, 16, 32]},
            "fit.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        },
    )
    return TrainConfig.model_validate(
        {
            "name": "bc",
            "data": {"source": "sklearn:breast_cancer"},
            "search": {"trials": 12, "keep": 3, "space": space, **search},
            "members": {"defaults": {"fit": {"epochs": 10}}},
        }
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_grid_over_a_range_without_step_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "search:\n  trials: 4\n  keep: 2\n  sampler: grid\n  space:\n"
        "    fit.learning_rate: {low: 0.001, high: 0.01}\n",
    )
    with pytest.raises(ConfigError, match=r"sampler grid needs a finite space: give fit.learning_rate"):
        load_config(path)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "train", "-c", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "sampler grid needs a finite space" in result.stderr
    assert not (tmp_path / "run" / "members").exists()


def test_unknown_sampler_and_pruner_are_refused() -> None:
    with pytest.raises(ValueError, match="sampler"):
        _config(sampler="bayes")
    with pytest.raises(ValueError, match="pruner"):
        _config(pruner="asha")


def test_grid_values_of_a_stepped_range() -> None:
    assert ParamSpace(low=1, high=3, step=1, integer=True).grid() == [1, 2, 3]
    assert ParamSpace(low=0.0, high=0.4, step=0.2).grid() == pytest.approx([0.0, 0.2, 0.4])
    assert ParamSpace(choices=["relu", "gelu"]).grid() == ["relu", "gelu"]
    with pytest.raises(ValueError, match="log or stepped"):
        ParamSpace(low=0.1, high=1.0, step=0.1, log=True)


def test_the_study_defaults_to_a_sqlite_file_next_to_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENSEMBLE_STUDY_STORAGE", raising=False)
    config = _config()
    assert storage_url(config, tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert storage_url(config, tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("ENSEMBLE_STUDY_STORAGE", "postgresql+psycopg://db/mlflow")
    assert storage_url(config, tmp_path) == "postgresql+psycopg://db/mlflow"
    assert study_name(config) == "bc-search"


@pytest.mark.parametrize(
    ("sampler", "kind"),
    [("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)],
)
def test_each_worker_asks_the_study_for_a_new_trial(sampler: str, kind: type, tmp_path: Path) -> None:
    config = _config(sampler=sampler)
    trials = [ask(config, tmp_path, i, seed=100 + i) for i in range(6)]
    for i, trial in enumerate(trials):
        assert isinstance(trial.study.sampler, kind)
        trial.finish("complete", 1.0 / (i + 1))
    assert [t.number for t in trials] == list(range(6))
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, tmp_path))
    assert [t.user_attrs["member_index"] for t in study.trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for trial, stored in zip(trials, study.trials, strict=True):
        assert trial.hparams.model.width == stored.params["model.width"]
        assert trial.hparams.fit.learning_rate == pytest.approx(stored.params["fit.learning_rate"])
    assert len({(t.params["model.width"], t.params["fit.learning_rate"]) for t in study.trials}) == 6


def test_grid_sampler_visits_every_point_once(tmp_path: Path) -> None:
    space = {
        "model.width": {"choices": [8, 16]},
        "model.depth": {"low": 1, "high": 3, "step": 1, "integer": True},
    }
    config = _config(sampler="grid", space=space)
    trials = [ask(config, tmp_path, i, seed=i) for i in range(6)]
    for trial in trials:
        trial.finish("complete", 0.5)
    points = {(t.hparams.model.width, t.hparams.model.depth) for t in trials}
    assert points == {(w, d) for w in (8, 16) for d in (1, 2, 3)}


def _run_trial(config: TrainConfig, tmp_path: Path, index: int, curve: list[float]) -> int | None:
    """Report ``curve`` epoch by epoch as a worker does; the epoch it was pruned at, if it was."""
    trial = ask(config, tmp_path, index, seed=index)
    for epoch, value in enumerate(curve):
        if trial.report(value, epoch):
            trial.finish("pruned")
            return epoch + 1
    trial.finish("complete", min(curve))
    return None


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_a_trial_far_behind_the_others_is_pruned(pruner: str, tmp_path: Path) -> None:
    config = _config(pruner=pruner)
    good = [1.0 / (epoch + 1) for epoch in range(10)]
    for index in range(6):
        assert _run_trial(config, tmp_path, index, good) is None
    pruned_at = _run_trial(config, tmp_path, 6, [5.0] * 10)
    assert pruned_at is not None
    assert pruned_at < 10
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, tmp_path))
    assert study.trials[6].state == optuna.trial.TrialState.PRUNED


def test_no_pruner_never_prunes(tmp_path: Path) -> None:
    config = _config(pruner="none")
    for index in range(5):
        _run_trial(config, tmp_path, index, [0.1] * 5)
    assert _run_trial(config, tmp_path, 5, [9.0] * 5) is None


def test_a_silent_trial_of_a_dead_worker_is_marked_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    config = _config(heartbeat=1, grace=2)
    dead = start_trial(config, tmp_path, 0, seed=0)
    assert dead is not None
    dead._stop.set()  # the worker dies: its heartbeat stops, nobody tells the study
    time.sleep(3.5)
    alive = ask(config, tmp_path, 1, seed=1)
    alive.finish("complete", 0.3)
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, tmp_path))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_a_live_trial_beats_and_is_not_failed(tmp_path: Path) -> None:
    config = _config(heartbeat=1, grace=2)
    live = start_trial(config, tmp_path, 0, seed=0)
    assert live is not None
    time.sleep(3.5)
    other = ask(config, tmp_path, 1, seed=1)
    study = open_study(config, storage_url(config, tmp_path), 0)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    live.finish("complete", 0.2)
    other.finish("fail")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]


def test_no_trial_without_a_search(tmp_path: Path) -> None:
    config = TrainConfig.model_validate({"members": {"count": 2}})
    assert start_trial(config, tmp_path, 0, seed=0) is None
    assert not (tmp_path / "study.db").exists()


def test_keep_top_k_never_keeps_a_pruned_trial() -> None:
    config = _config()
    member = read_record(RUN_BEFORE / "members" / "m0" / "member.json", MemberRecord)
    records = [
        member.model_copy(
            update={"index": i, "trial": TrialRecord(number=i, pruned_at_epoch=4 if i in (0, 2) else None)}
        )
        for i in range(5)
    ]
    pruned = pruned_reasons(records)
    assert set(pruned) == {0, 2}
    assert "pruned by the search at epoch 4" in pruned[0]
    losses = [0.1, 0.5, 0.05, 0.3, 0.2]
    assert top_candidates(config, losses, pruned) == [4, 3, 1]
    assert top_candidates(config, losses) == [2, 0, 4]


def test_a_storage_that_is_not_a_database_url_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a database URL"):
        _config(storage="study.db")
    path = _write(tmp_path, "search:\n  trials: 2\n  keep: 1\n  space:\n    model.width: {choices: [4, 8]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "train-member", "-c", str(path),
         "--out", str(tmp_path / "run"), "--index", "0", "--study-storage", "study.db"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --study-storage: study storage 'study.db' is not a database URL "
        "(e.g. sqlite:///study.db, postgresql+psycopg://...)"
    )
    assert not (tmp_path / "run").exists()
