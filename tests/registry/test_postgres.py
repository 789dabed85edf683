"""The production setup: ``mlflow server`` with a PostgreSQL backend store, driven over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.model_config import read_model_config
from registry.client import connect
from registry.promotion import promote
from registry.resolve import resolve_manifest
from registry.sync import sync_once
from registry.tracking import record_training
from tests.registry.conftest import MlflowServer, run_mlflow_server, run_postgres
from tests.registry.fakes import write_training_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with run_postgres() as database_url:
        root = tmp_path_factory.mktemp("mlflow-pg")
        with run_mlflow_server(database_url, root) as server:
            yield server


def test_register_promote_and_sync_on_postgres(postgres_mlflow: MlflowServer, tmp_path: Path) -> None:
    uri = postgres_mlflow.uri
    write_training_output(tmp_path / "a", "pg", test_nll=0.3, payload="a")
    first = record_training(tmp_path / "a", uri, register=True, alias="champion")
    write_training_output(tmp_path / "b", "pg", test_nll=0.2, payload="b")
    second = record_training(tmp_path / "b", uri, register=True, alias=None)
    assert (first.ensemble_version, second.ensemble_version) == (1, 2)

    client = connect(uri)
    result = promote(client, "pg", 2, "champion")
    assert result.move is not None
    assert (result.move.from_version, result.move.to_version) == (1, 2)
    manifest = resolve_manifest(uri, "pg", "champion")
    assert manifest.version == 2
    assert manifest.provenance.parent_run_id == second.parent_run_id

    sync_once(client, "pg", ["champion"], tmp_path / "repo")
    entries = {entry.name: entry for entry in read_model_config(tmp_path / "repo" / "models.config")}
    for member in manifest.members:
        assert entries[member.name].versions == [member.version]
        assert entries[member.name].labels == {"champion": member.version}
        model = tmp_path / "repo" / member.name / str(member.version) / "saved_model.pb"
        assert model.read_text() == f"{member.name}:b"
