"""End to end: train, export, assemble, on bundled sets and on a CSV of one's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.combine import combine_outputs
from contracts.manifest import Manifest

pytestmark = pytest.mark.slow


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_digits_layout_manifest_and_models_config(tiny_digits: Path) -> None:
    from contracts.model_config import read_model_config

    for name in ("config.yaml", "dataset.json", "ensemble.json", "report.json", "models/models.config"):
        assert (tiny_digits / name).is_file(), name
    for plot in ("learning_curves.png", "reliability.png", "members_vs_ensemble.png"):
        assert (tiny_digits / "plots" / plot).stat().st_size > 1000
    manifest = Manifest.load(tiny_digits / "ensemble.json")
    assert manifest.name == "digits"
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [("pixels", "float32", [-1, 64])]
    (output,) = manifest.outputs
    assert (output.name, output.kind, output.shape, output.classes) == (
        "probabilities",
        "probabilities",
        [-1, 10],
        [str(d) for d in range(10)],
    )
    assert set(manifest.metrics) == {"test_accuracy", "test_nll", "test_brier", "test_ece"}
    assert manifest.provenance.dataset == "sklearn:digits"
    assert len(manifest.provenance.test_fingerprint) == 64
    dataset = json.loads((tiny_digits / "dataset.json").read_text())
    assert dataset["test_fingerprint"] == manifest.provenance.test_fingerprint
    assert all(m.weight > 0 for m in manifest.members)
    assert sum(m.weight for m in manifest.members) == pytest.approx(1.0)

    entries = {e.name: e for e in read_model_config(tiny_digits / "models" / "models.config")}
    assert set(entries) == {m.name for m in manifest.members}
    for member in manifest.members:
        entry = entries[member.name]
        assert Path(entry.base_path).is_absolute()
        assert entry.versions == [member.version]
        assert (Path(entry.base_path) / str(member.version) / "saved_model.pb").is_file()

    for i in range(3):
        member_dir = tiny_digits / "members" / f"m{i}"
        record = json.loads((member_dir / "member.json").read_text())
        assert record["model_name"] == f"digits-m{i}"
        assert record["version"] == 1
        assert record["fold"] == i
        assert record["rows"]["out_of_fold"] == record["rows"]["early_stopping"] > 0
        assert {"val_nll", "oof_nll", "test_nll", "val_accuracy"} <= set(record["metrics"])
        assert (member_dir / "checkpoint.keras").is_file()
        assert any((member_dir / "tensorboard").rglob("events.out.tfevents.*"))
        history = pd.read_csv(member_dir / "history.csv")
        assert len(history) == record["epochs_trained"]
        assert "val_loss" in history


def test_ensemble_nll_is_below_the_mean_member_nll(tiny_digits: Path) -> None:
    report = json.loads((tiny_digits / "report.json").read_text())
    member_nll = [m["metrics"]["test_nll"] for m in report["members"]]
    assert report["ensemble_uniform"]["test_nll"] < np.mean(member_nll)
    assert report["ensemble_served"]["test_nll"] < np.mean(member_nll)
    manifest = Manifest.load(tiny_digits / "ensemble.json")
    assert manifest.metrics["test_nll"] == pytest.approx(report["ensemble_served"]["test_nll"])


def test_every_member_is_served_and_the_report_says_why_the_weights_are_uniform(tiny_digits: Path) -> None:
    """Three members, three folds: every row has one holder, so no weighting can be learned."""
    report = json.loads((tiny_digits / "report.json").read_text())
    assert report["split"] == {"method": "cross_fit", "folds": 3}
    assert [m["kept"] for m in report["members"]] == [True] * 3
    assert [m["fold"] for m in report["members"]] == [0, 1, 2]
    assert report["weights"]["served"] == "uniform"
    assert report["weights"]["informative_rows"] == 0
    assert report["weights"]["note"].startswith("uniform: every row was held out by one member only")
    assert "ensemble_learned" not in report
    manifest = Manifest.load(tiny_digits / "ensemble.json")
    assert len(manifest.members) == 3
    assert manifest.combiner.method == "mean"
    dataset = json.loads((tiny_digits / "dataset.json").read_text())
    assert dataset["split"]["method"] == "cross_fit"
    assert sum(dataset["split"]["fold_rows"]) == dataset["rows"]["train"]
    # Every non-test row is out of fold for exactly one member.
    held = [_npz(tiny_digits / "members" / f"m{i}" / "predictions.npz")["oof_rows"] for i in range(3)]
    joined = np.concatenate(held)
    assert len(np.unique(joined)) == len(joined) == dataset["rows"]["train"]


def test_export_round_trip_and_offline_numbers_match_the_saved_models(tiny_digits: Path) -> None:
    import tensorflow as tf

    from contracts.run_layout import RunLayout
    from training.data import prepare
    from training.layout import load_config
    from training.metrics import nll

    config = load_config(RunLayout(tiny_digits))
    dataset = prepare(config.data, config.seed)
    pixels = dataset.features(dataset.test_rows)["pixels"]
    manifest = Manifest.load(tiny_digits / "ensemble.json")
    answers = []
    for index, member in enumerate(manifest.members):
        loaded = tf.saved_model.load(str(tiny_digits / "models" / member.name / str(member.version)))
        signature = loaded.signatures["serving_default"]
        assert list(signature.structured_input_signature[1]) == ["pixels"]
        assert list(signature.structured_outputs) == ["probabilities"]
        answer = signature(pixels=tf.constant(pixels))["probabilities"].numpy()
        saved = _npz(tiny_digits / "members" / f"m{index}" / "predictions.npz")
        assert set(saved) == {"oof_rows", "oof/probabilities", "test/probabilities"}
        np.testing.assert_allclose(answer, saved["test/probabilities"], atol=1e-5)
        answers.append({"probabilities": answer})
    combined = combine_outputs(answers, manifest.weights)["probabilities"]
    labels = dataset.labels(dataset.test_rows)["probabilities"]
    assert nll(combined, labels) == pytest.approx(manifest.metrics["test_nll"], abs=1e-5)


def test_assemble_again_is_repeatable(tiny_digits: Path) -> None:
    from training.assemble import assemble

    before = Manifest.load(tiny_digits / "ensemble.json")
    assemble(tiny_digits)
    after = Manifest.load(tiny_digits / "ensemble.json")
    assert after.members == before.members
    assert after.metrics == before.metrics


def test_penguins_categorical_missing_values_and_search(tmp_path: Path) -> None:
    import tensorflow as tf

    from training.testing import train_tiny

    out = train_tiny(
        tmp_path / "penguins",
        "penguins",
        members=3,
        epochs=4,
        in_process=True,
        extra={
            "members.defaults.model.architecture": "branches",
            "members.defaults.model.categorical_encoding": "embedding",
            "search.trials": 3,
            "search.keep": 2,
            "search.space": {
                "model.width": {"choices": [8, 16, 32]},
                "fit.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
            },
        },
    )
    manifest = Manifest.load(out / "ensemble.json")
    specs = {s.name: (s.dtype, s.shape) for s in manifest.inputs}
    # One value per instance for single columns, so a record is written as a user writes it.
    assert specs["island"] == ("string", [-1])
    assert specs["sex"] == ("string", [-1])
    assert specs["bill_length_mm"] == ("float32", [-1])
    assert manifest.outputs[0].classes == ["Adelie", "Chinstrap", "Gentoo"]
    report = json.loads((out / "report.json").read_text())
    assert len(report["members"]) == 3
    assert sum(m["kept"] for m in report["members"]) == 2
    (dropped,) = [m for m in report["members"] if not m["kept"]]
    assert dropped["dropped_reason"].startswith("not kept by the search: rank 3 of 3 by out-of-fold loss")
    assert dropped["weight"] == 0.0
    assert len(manifest.members) == 2  # every member the search kept is served
    assert [m["fold"] for m in report["members"]] == [0, 1, 0]  # trials share the kept members' 2 folds
    widths = {m["hyperparameters"]["model"]["width"] for m in report["members"]}
    assert widths <= {8, 16, 32}

    member = manifest.members[0]
    signature = tf.saved_model.load(str(out / "models" / member.name / str(member.version))).signatures[
        "serving_default"
    ]
    inputs = {
        name: tf.constant(["", "Biscoe"]) if dtype == "string" else tf.constant([np.nan, 45.0], tf.float32)
        for name, (dtype, _) in specs.items()
    }
    probs = signature(**inputs)["probabilities"].numpy()
    assert probs.shape == (2, 3)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_diabetes_regression(tmp_path: Path) -> None:
    from training.testing import train_tiny

    out = train_tiny(
        tmp_path / "diabetes",
        "sklearn:diabetes",
        members=2,
        epochs=20,
        in_process=True,
        extra={
            "members.bootstrap": True,
            "members.defaults.model.architecture": "residual",
            "members.defaults.model.batch_norm": True,
            "members.defaults.fit.schedule": "exponential",
            "assemble.weights": "greedy",
        },
    )
    manifest = Manifest.load(out / "ensemble.json")
    (output,) = manifest.outputs
    assert (output.name, output.kind, output.shape, output.classes) == (
        "predictions",
        "predictions",
        [-1, 1],
        None,
    )
    assert set(manifest.metrics) == {"test_rmse", "test_mae"}
    report = json.loads((out / "report.json").read_text())
    assert report["weights_method"] == "greedy"
    assert {m["hyperparameters"]["model"]["architecture"] for m in report["members"]} == {"residual"}
    assert (out / "plots" / "predicted_vs_actual.png").is_file()
    # in the target's own units, and better than always answering the mean
    from contracts.run_layout import RunLayout
    from training.data import prepare
    from training.layout import load_config

    config = load_config(RunLayout(out))
    dataset = prepare(config.data, config.seed)
    y_test = dataset.labels(dataset.test_rows)["predictions"]
    assert manifest.metrics["test_rmse"] < float(np.std(y_test))
    predictions = _npz(out / "members" / "m0" / "predictions.npz")["test/predictions"]
    assert 25 < float(np.mean(predictions)) < 350


def _ensemble(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_csv_with_own_columns_and_two_targets_through_the_cli(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 240
    size = rng.normal(10, 3, rows)
    colour = rng.choice(["red", "blue", ""], rows)
    frame = pd.DataFrame(
        {
            "size": np.where(rng.random(rows) < 0.05, np.nan, size),
            "colour": colour,
            "flat": 3.0,
            "kind": np.where(size > 10, "big", "small"),
            "price": 2 * size + (colour == "red") * 5 + rng.normal(0, 0.5, rows),
        }
    )
    frame.to_csv(tmp_path / "shop.csv", index=False)
    result = _ensemble(
        "train",
        "--data",
        "shop.csv",
        "--target",
        "kind,price",
        "--members",
        "2",
        "--epochs",
        "4",
        "--workers",
        "2",
        "--out",
        "run",
        "--no-track",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ensemble, uniform" in result.stdout
    assert "Serving 2 of 2 members. Weights: uniform: every row was held out by one member only" in (
        " ".join(result.stdout.split())
    )
    assert "member 2/2: done" in result.stdout
    plots = {p.name for p in (tmp_path / "run" / "plots").iterdir()}
    assert {
        "learning_curves.png",
        "reliability_kind.png",
        "members_vs_ensemble_kind.png",
        "predicted_vs_actual_price.png",
        "members_vs_ensemble_price.png",
    } <= plots
    manifest = Manifest.load(tmp_path / "run" / "ensemble.json")
    assert manifest.name == "shop"
    assert [(o.name, o.kind, o.target) for o in manifest.outputs] == [
        ("kind_probabilities", "probabilities", "kind"),
        ("price_predictions", "predictions", "price"),
    ]
    assert {"test_kind_accuracy", "test_kind_nll", "test_price_rmse", "test_price_mae"} <= set(
        manifest.metrics
    )
    assert {s.name: s.dtype for s in manifest.inputs} == {
        "size": "float32",
        "colour": "string",
        "flat": "float32",
    }
    assert np.isfinite(list(manifest.metrics.values())).all()


def test_bad_input_exits_with_one_line_in_a_real_process(tmp_path: Path) -> None:
    result = _ensemble("train", "--data", "missing.csv", "--out", "run", "--no-track", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot read missing.csv: no such file (or a bundled set: sklearn:digits, "
        "sklearn:breast_cancer, sklearn:diabetes, penguins)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "sklearn:digits", "--target", "nope"], "target column 'nope' not found"),
        (["--data", "sklearn:diabetes", "--members", "0"], "members.count"),
        (["--config", "bad.yaml"], "not valid YAML"),
        (["--config", "nowhere.yaml"], "cannot read config"),
        (["--data", "tiny.csv", "--target", "y"], "too few rows"),
        (
            ["--data", "words.csv", "--target", "y", "--task", "regression"],
            "regression target 'y' is not numeric",
        ),
        (["--data", "words.csv", "--target", "y", "--task", "guess"], "data.task"),
        (["--data", "sklearn:digits", "--workers", "0"], "--workers must be at least 1"),
        (
            ["--config", "typo.yaml"],
            "members.defaults.fit.loss_weights names columns that are not targets: kidn",
        ),
        (
            ["--config", "variant.yaml"],
            "members.variants[1].fit.loss_weights names columns that are not targets",
        ),
        (["--config", "given.yaml"], "assemble.given: weights must be finite and not negative"),
        (["--config", "two.yaml", "--members", "3"], "assemble.given has 2 weights for 3 members"),
        (["--data", "penguins", "--members", "200"], "too few rows for 100 folds"),  # 2 members a fold
    ],
)
def test_bad_input_exits_with_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import build_app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("members: [1,\n")
    pd.DataFrame({"x": range(5), "y": range(5)}).to_csv(tmp_path / "tiny.csv", index=False)
    pd.DataFrame({"x": range(40), "y": ["a", "b"] * 20}).to_csv(tmp_path / "words.csv", index=False)
    frame = pd.DataFrame({"x": range(60), "kind": ["a", "b"] * 30, "price": np.arange(60) * 1.5})
    frame.to_csv(tmp_path / "shop.csv", index=False)
    shop = "data: {source: shop.csv, targets: [kind, price]}\n"
    (tmp_path / "typo.yaml").write_text(shop + "members:\n  defaults:\n    fit: {loss_weights: {kidn: 2}}\n")
    (tmp_path / "variant.yaml").write_text(
        shop + "members:\n  variants:\n    - {}\n    - fit: {loss_weights: {kind: 1, prise: 2}}\n"
    )
    (tmp_path / "given.yaml").write_text("members: {count: 2}\nassemble: {weights: given, given: [1, -1]}\n")
    (tmp_path / "two.yaml").write_text("assemble: {weights: given, given: [1, 2]}\n")
    result = CliRunner().invoke(build_app(), ["train", *args, "--out", "run", "--no-track"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert not (tmp_path / "run" / "members").exists()


def test_next_version_is_the_next_free_integer(tmp_path: Path) -> None:
    from training.export import next_version

    assert next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "notes", "7.bak"):
        (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / "9").touch()  # a file, not a version folder
    assert next_version(tmp_path / "m") == 4
