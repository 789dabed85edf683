"""Pure parts of the registry: references, the promotion gate, alias history, output-directory reading."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from contracts.manifest import Manifest
from registry.aliases import AliasMove, check_alias, history, holder_stack, move_alias
from registry.defaults import DEFAULT_TRACKING_URI, tracking_uri
from registry.errors import InvalidArgument
from registry.outdir import read_training_output
from registry.promotion import gate, higher_is_better
from registry.resolve import EnsembleRef, parse_ref
from registry.tracking import ui_hint
from tests.contracts.samples import RUN_BEFORE
from tests.registry.fakes import write_training_output


def _manifest(tmp_path: Path, *, nll: float, fingerprint: str = "t" * 64, version: int = 1) -> Manifest:
    manifest = write_training_output(tmp_path / f"out-{version}", test_nll=nll, test_fingerprint=fingerprint)
    return manifest.model_copy(update={"version": version})


def test_parse_ref_forms() -> None:
    assert parse_ref("digits") == EnsembleRef("digits")
    assert parse_ref("digits@champion") == EnsembleRef("digits", alias="champion")
    assert parse_ref("digits/3") == EnsembleRef("digits", version=3)
    for bad in ("", "digits@", "digits/x", "@champion", "digits@a-b"):
        with pytest.raises(InvalidArgument):
            parse_ref(bad)


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(None) == "http://mlflow:5000"
    assert tracking_uri("sqlite:///other.db") == "sqlite:///other.db"


def test_gate_compares_metric_on_same_test_data(tmp_path: Path) -> None:
    holder = _manifest(tmp_path, nll=0.3, version=1)
    better = _manifest(tmp_path, nll=0.2, version=2)
    worse = _manifest(tmp_path, nll=0.4, version=3)
    equal = _manifest(tmp_path, nll=0.3, version=4)
    other_data = _manifest(tmp_path, nll=0.1, fingerprint="o" * 64, version=5)
    assert gate(better, holder, "test_nll").passed
    assert gate(equal, holder, "test_nll").passed
    verdict = gate(worse, holder, "test_nll")
    assert not verdict.passed
    assert "worse" in verdict.reason
    # Accuracy grows with quality: the worse-NLL manifest also has the lower accuracy.
    assert not gate(worse, holder, "test_accuracy").passed
    assert gate(better, holder, "test_accuracy").passed
    verdict = gate(other_data, holder, "test_nll")
    assert not verdict.passed
    assert "different test data" in verdict.reason
    verdict = gate(better, holder, "test_rmse")
    assert not verdict.passed
    assert "no metric" in verdict.reason


def test_higher_is_better_only_for_accuracy_like_metrics() -> None:
    assert higher_is_better("test_accuracy")
    assert not higher_is_better("test_nll")
    assert not higher_is_better("test_brier")


def _move(alias: str, frm: int | None, to: int, action: str) -> AliasMove:
    return AliasMove.model_validate(
        {"alias": alias, "from_version": frm, "to_version": to, "action": action, "who": "t", "when": "x"}
    )


def test_holder_stack_walks_back_through_rollbacks() -> None:
    moves = [
        _move("champion", None, 1, "register"),
        _move("champion", 1, 2, "promote"),
        _move("champion", 2, 3, "promote"),
        _move("champion", 3, 2, "rollback"),
    ]
    assert holder_stack(moves) == [1, 2]
    assert holder_stack([*moves, _move("champion", 2, 1, "rollback")]) == [1]
    assert holder_stack([*moves, _move("champion", 2, 4, "promote")]) == [1, 2, 4]


def test_alias_must_be_a_tf_serving_label() -> None:
    assert check_alias("champion") == "champion"
    for bad in ("cham-pion", "v3", "latest", "", "1st"):
        with pytest.raises(InvalidArgument):
            check_alias(bad)


def test_read_training_output(tmp_path: Path) -> None:
    write_training_output(tmp_path / "out", members=3, epochs=4)
    output = read_training_output(tmp_path / "out")
    assert [m.model_name for m in output.members] == ["digits-m0", "digits-m1", "digits-m2"]
    history = output.members[1].history()
    assert [step for step, _ in history] == [0, 1, 2, 3]
    assert set(history[0][1]) == {"loss", "val_loss", "lr"}
    assert output.members[1].record.hyperparameters["units"] == 64
    assert output.members[1].index == 1
    assert output.dataset is not None
    assert output.dataset.test_fingerprint == "t" * 64
    assert output.report is not None
    assert output.report.member("digits-m1") is not None


def test_read_training_output_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        read_training_output(tmp_path / "absent")
    write_training_output(tmp_path / "out")
    (tmp_path / "out" / "models" / "digits-m1" / "1" / "saved_model.pb").unlink()
    with pytest.raises(InvalidArgument, match=r"no saved_model\.pb"):
        read_training_output(tmp_path / "out")
    (tmp_path / "out" / "ensemble.json").unlink()
    with pytest.raises(InvalidArgument, match=r"ensemble\.json is missing"):
        read_training_output(tmp_path / "out")


def test_read_training_output_of_a_folder_written_before_the_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(RUN_BEFORE, run)
    for name in ("digits-m0", "digits-m1"):
        (run / "models" / name / "1").mkdir(parents=True)
        (run / "models" / name / "1" / "saved_model.pb").write_bytes(b"pb")
    output = read_training_output(run)
    assert [m.model_name for m in output.members] == ["digits-m0", "digits-m1"]
    assert [m.index for m in output.trained] == [0, 1]
    assert output.members[0].folder.history == run / "members" / "m0" / "history.csv"
    assert output.members[0].metrics["test_nll"] == output.members[0].record.metrics["test_nll"]
    served, weight, reason = output.status(output.members[1])
    assert (served, reason) == (True, "")
    assert weight == pytest.approx(0.5)
    assert output.dataset is not None
    assert output.dataset.source == "sklearn:digits"
    assert output.report is not None
    assert output.report.weights.served == "uniform"

    record = run / "members" / "m1" / "member.json"
    record.write_text(record.read_text().replace('"version": 1', '"version": "one"', 1))
    with pytest.raises(InvalidArgument) as caught:
        read_training_output(run)
    assert str(caught.value).startswith(f"{record}: version: Input should be a valid integer")
    assert "\n" not in str(caught.value)


def test_no_mlflow_import_at_import_time() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cli.main, cli.registry\n"
        "import registry, registry.aliases, registry.client, registry.outdir\n"
        "import registry.promotion, registry.registration, registry.resolve, registry.sync\n"
        "import registry.tracking, registry.views\n"
        "try:\n"
        "    cli.main.build_app()(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('mlflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_reading_a_missing_local_store_creates_nothing(tmp_path: Path) -> None:
    from registry.client import connect
    from registry.errors import NotFound

    database = tmp_path / "absent.db"
    with pytest.raises(NotFound, match="no registry at"):
        connect(f"sqlite:///{database}")
    assert not database.exists()


class _RacingClient:
    """An MLflow client whose reads all see the state from before any write: two moves racing."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.snapshot = SimpleNamespace(tags={}, aliases={})

    def get_registered_model(self, name: str) -> SimpleNamespace:
        return self.snapshot

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if not name.endswith(("-m0", "-m1")):
            self.aliases[alias] = version

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.tags[key] = value

    def current(self) -> SimpleNamespace:
        return SimpleNamespace(tags=dict(self.tags), aliases=dict(self.aliases))


def test_simultaneous_alias_moves_are_both_recorded(tmp_path: Path) -> None:
    client = _RacingClient()
    for manifest in (_manifest(tmp_path, nll=0.2, version=1), _manifest(tmp_path, nll=0.1, version=2)):
        move_alias(client, manifest, "champion", action="promote")  # type: ignore[arg-type]
    assert len(client.tags) == 2  # the same seq, different keys: neither overwrote the other
    client.snapshot = client.current()
    moves = history(client, "digits", "champion")  # type: ignore[arg-type]
    assert [move.to_version for move in moves] == [1, 2]
    assert {move.seq for move in moves} == {1}


def test_ui_hint_runs_from_a_shell_without_the_environment_on_path(tmp_path: Path) -> None:
    """The printed command works as pasted, with no virtual environment's bin/ on PATH."""
    hint = ui_hint("sqlite:///mlruns.db")
    command = shlex.split(hint.split("  (")[0])
    assert command[1:4] == ["-m", "mlflow", "ui"]
    done = subprocess.run(
        [*command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "--backend-store-uri" in done.stdout
