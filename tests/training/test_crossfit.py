"""Cross-fitting across processes: one ``train-member --index I`` per pod, then ``assemble``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contracts.manifest import Manifest
from training.config import load_config
from training.data import prepare
from training.folds import assign_folds, member_rows
from training.member import member_seed

pytestmark = pytest.mark.slow

CONFIG = """\
data: {source: sklearn:breast_cancer}
members:
  count: 2
  bootstrap: true
  defaults:
    model: {width: 16, depth: 1}
    fit: {epochs: 3, patience: 3}
"""


def _ensemble(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_members_trained_in_separate_processes_hold_out_the_folds_assemble_expects(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text(CONFIG)
    # Two "pods", at the same time, each told only its index (as an Indexed Job does).
    pods = [
        _ensemble("train-member", "--out", "run", "--index", str(i), "--config", "train.yaml", cwd=tmp_path)
        for i in (0, 1)
    ]
    for pod in pods:
        output, _ = pod.communicate(timeout=600)
        assert pod.returncode == 0, output[-3000:]
    assembled = _ensemble("assemble", "--out", "run", "--no-track", cwd=tmp_path)
    output, _ = assembled.communicate(timeout=300)
    assert assembled.returncode == 0, output[-3000:]

    run = tmp_path / "run"
    config = load_config(run / "config.yaml")
    dataset = prepare(config.data, config.seed)
    folds = assign_folds(dataset, config)
    for index in (0, 1):
        record = json.loads((run / "members" / f"m{index}" / "member.json").read_text())
        assert record["fold"] == index
        expected = member_rows(config, dataset, index, member_seed(config.seed, index))
        with np.load(run / "members" / f"m{index}" / "predictions.npz") as saved:
            rows = saved["oof_rows"]
            assert saved["oof/probabilities"].shape == (len(rows), 2)
        # What the pod held out is what any other process derives from the config and the index:
        # its own fold, plus its out-of-bag rows of the other fold, never a row it trained on.
        assert np.array_equal(rows, expected.held_out)
        assert np.isin(dataset.train_rows[folds == index], rows).all()
        assert not np.intersect1d(rows, expected.fit).size
        assert record["rows"]["out_of_fold"] == len(rows) > record["rows"]["early_stopping"]

    report = json.loads((run / "report.json").read_text())
    # Out-of-bag rows of one member's fold are held out by both: weights can be compared there.
    assert report["weights"]["informative_rows"] >= 100
    assert report["weights"]["oof_loss_uniform"] is not None
    assert report["weights"]["served"] in ("learned", "uniform")
    assert [m["kept"] for m in report["members"]] == [True, True]
    manifest = Manifest.load(run / "ensemble.json")
    assert [m.name for m in manifest.members] == ["breast_cancer-m0", "breast_cancer-m1"]
    assert min(m.weight for m in manifest.members) > 0
    assert "Serving 2 of 2 members." in output
    assert report["weights"]["note"] in " ".join(output.split())
