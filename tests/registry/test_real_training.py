"""A real (tiny) Keras training, logged and registered over HTTP, then synced to a model repository."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from contracts.manifest import Manifest
from contracts.model_config import read_model_config
from registry.client import connect
from registry.resolve import resolve_manifest
from registry.sync import sync_once
from registry.tracking import record_training
from tests.registry.conftest import MlflowServer

pytestmark = pytest.mark.slow


def test_tiny_training_registers_and_syncs(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    testing = pytest.importorskip("training.testing")
    out = testing.train_tiny(tmp_path / "out", members=2, epochs=2)
    trained = Manifest.load(out / "ensemble.json")

    logged = record_training(out, mlflow_server.uri, register=True, alias="champion")
    client = connect(mlflow_server.uri)
    member_run = client.get_run(logged.member_run_ids[0])
    assert len(client.get_metric_history(member_run.info.run_id, "loss")) >= 1
    assert member_run.data.tags["dataset.fingerprint"]

    manifest = resolve_manifest(mlflow_server.uri, trained.name, "champion")
    assert [(m.name, m.weight) for m in manifest.members] == [(m.name, m.weight) for m in trained.members]
    assert manifest.metrics == trained.metrics

    sync_once(client, trained.name, ["champion"], tmp_path / "repo")
    entries = {entry.name: entry for entry in read_model_config(tmp_path / "repo" / "models.config")}
    for served, original in zip(manifest.members, trained.members, strict=True):
        assert entries[served.name].versions == [served.version]
        exported = out / "models" / original.name / str(original.version)
        synced = tmp_path / "repo" / served.name / str(served.version)
        assert filecmp.cmp(exported / "saved_model.pb", synced / "saved_model.pb", shallow=False)
        assert (synced / "variables").is_dir()
