"""The search end to end: a pruned trial in a real MLflow, and two worker processes sharing one study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.prepare import prepare_run, resolve_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "ENSEMBLE_STUDY_STORAGE": ""}


def _ensemble(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )


def test_a_pruned_trial_stops_early_and_is_tagged_pruned_in_mlflow(tmp_path: Path) -> None:
    # With seed 0 the random sampler gives trials 0-4 a rate that learns and trial 5 one that
    # cannot (1e-6): the median pruner, past its 4 startup trials, stops trial 5 at epoch 4.
    config = tmp_path / "search.yaml"
    config.write_text(
        "name: bc\nseed: 0\ndata: {source: 'sklearn:breast_cancer'}\n"
        "search:\n  trials: 6\n  keep: 2\n  sampler: random\n  pruner: median\n"
        "  space:\n    fit.learning_rate: {choices: [1.0e-6, 0.05]}\n"
        "members:\n  defaults:\n    model: {width: 8}\n    fit: {epochs: 8, patience: 8, batch_size: 64}\n"
    )
    out = tmp_path / "run"
    result = _ensemble(
        "train", "-c", str(config), "--out", str(out), "--workers", "1",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dropped bc-m5: pruned by the search at epoch 4" in result.stdout

    pruned = json.loads((out / "members" / "m5" / "member.json").read_text())
    assert pruned["trial"]["pruned_at_epoch"] == 4
    assert pruned["epochs_trained"] == 4
    assert pruned["hyperparameters"]["fit"]["learning_rate"] == 1e-6
    finished = json.loads((out / "members" / "m0" / "member.json").read_text())
    assert finished["trial"]["pruned_at_epoch"] is None
    assert finished["epochs_trained"] == 8
    served = {m["name"] for m in json.loads((out / "ensemble.json").read_text())["members"]}
    assert "bc-m5" not in served
    assert len(served) == 2

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`search.fate` != ''"
    )
    fates = {r.info.run_name: r.data.tags["search.fate"] for r in runs}
    assert fates["bc-m5"] == "pruned"
    assert sorted(fates.values()).count("kept") == 2
    assert sorted(fates.values()).count("not kept") == 3
    m5 = next(r for r in runs if r.info.run_name == "bc-m5")
    assert m5.data.tags["mlflow.parentRunId"]
    assert m5.data.params["fit.learning_rate"] == "1e-06"
    assert len(client.get_metric_history(m5.info.run_id, "val_loss")) == 4

    # A trial whose worker died leaves no member.json: assemble goes on with the trials that finished.
    (out / "members" / "m1" / "member.json").unlink()
    again = _ensemble("assemble", "--out", str(out), "--no-track", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert [m["index"] for m in report["members"]] == [0, 2, 3, 4, 5]
    assert sum(1 for m in report["members"] if m["kept"]) == 2


def test_two_train_member_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    import optuna

    config = tmp_path / "search.yaml"
    config.write_text(
        "name: shared\nseed: 5\ndata: {source: 'sklearn:breast_cancer'}\n"
        "search:\n  trials: 4\n  keep: 2\n  sampler: tpe\n  study: by-hand\n"
        "  space:\n    model.width: {choices: [4, 8, 16]}\n"
        "    fit.learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}\n"
        "members:\n  defaults:\n    fit: {epochs: 2, patience: 2, batch_size: 64}\n"
    )
    out = tmp_path / "run"
    prepare_run(resolve_config(config, {}, None), out)
    url = f"sqlite:///{tmp_path / 'shared-study.db'}"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "train-member",
                "--out",
                str(out),
                "--study-storage",
                url,
                "--threads",
                "1",
                *indices,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=ENV,
        )
        for indices in (["--index", "0", "--index", "2"], ["--index", "1", "--index", "3"])
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-2000:]

    study = optuna.load_study(study_name="by-hand", storage=url)
    trials = study.trials
    assert len(trials) == 4
    assert sorted(t.user_attrs["member_index"] for t in trials) == [0, 1, 2, 3]
    assert len({t.number for t in trials}) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        record = json.loads(
            (out / "members" / f"m{trial.user_attrs['member_index']}" / "member.json").read_text()
        )
        assert record["trial"]["number"] == trial.number
        assert record["hyperparameters"]["model"]["width"] == trial.params["model.width"]
        assert record["best_val_loss"] == pytest.approx(trial.value)
    # Nothing went to the run's default study: both workers used the URL they were given.
    assert not (out / "study.db").exists()
