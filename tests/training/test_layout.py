"""Training reads its run folder through the shared layout; a bad record or config is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts.run_layout import OOF_PREFIX, OOF_ROWS, TEST_PREFIX, RunLayout
from tests.contracts.samples import RUN_BEFORE
from training.assemble import load_members
from training.errors import TrainingError
from training.layout import load_config


def _run(tmp_path: Path) -> RunLayout:
    """The sample run, with each member's predictions as assembly reads them."""
    shutil.copytree(RUN_BEFORE, tmp_path / "run")
    layout = RunLayout(tmp_path / "run")
    for index in (0, 1):
        arrays: dict[str, Any] = {OOF_ROWS: np.arange(3), f"{TEST_PREFIX}probabilities": np.eye(10)}
        arrays[f"{OOF_PREFIX}probabilities"] = np.full((3, 10), 0.1)
        np.savez(layout.member(index).predictions, **arrays)
    return layout


def test_assembly_reads_the_members_as_typed_records(tmp_path: Path) -> None:
    members = load_members(_run(tmp_path), 2)
    assert [m.name for m in members] == ["digits-m0", "digits-m1"]
    assert [m.record.fold for m in members] == [0, 1]
    assert members[1].oof["probabilities"].shape == (3, 10)


def test_an_invalid_member_record_stops_assembly_in_one_line(tmp_path: Path) -> None:
    layout = _run(tmp_path)
    path = layout.member(1).record
    record = json.loads(path.read_text())
    record["metrics"]["test_nll"] = "low"
    path.write_text(json.dumps(record))
    with pytest.raises(TrainingError) as caught:
        load_members(layout, 2)
    assert str(caught.value).startswith(f"{path}: metrics.test_nll: Input should be a valid number")
    assert "\n" not in str(caught.value)


def test_a_missing_member_record_names_the_member(tmp_path: Path) -> None:
    layout = _run(tmp_path)
    layout.member(0).record.unlink()
    with pytest.raises(TrainingError, match=r"member m0 has not finished \(.*member\.json is missing\)"):
        load_members(layout, 2)
    assert [m.name for m in load_members(layout, 2, skip_unfinished=True)] == ["digits-m1"]


def test_a_folder_without_its_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"config\.yaml not found: is .* a training output directory\?"):
        load_config(RunLayout(tmp_path))
