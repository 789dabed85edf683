"""The whole registry flow over HTTP against a real ``mlflow server``: log, register, promote, sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import build_app
from contracts.model_config import read_model_config
from registry.client import connect
from registry.resolve import resolve_manifest, resolve_version
from registry.tracking import record_training
from serving.testing import free_port
from tests.registry.conftest import MlflowServer
from tests.registry.fakes import write_training_output

pytestmark = pytest.mark.slow


def _train(server: MlflowServer, out: Path, name: str, alias: str | None = None, **kwargs: object) -> int:
    kwargs.setdefault("members", 1)  # one member keeps the many trainings here quick
    write_training_output(out, name, **kwargs)  # type: ignore[arg-type]
    logged = record_training(out, server.uri, register=True, alias=alias)
    assert logged.ensemble_version is not None
    return logged.ensemble_version


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_training_is_logged_and_registered(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    write_training_output(tmp_path / "out", "track", members=2, epochs=3, test_nll=0.25)
    logged = record_training(tmp_path / "out", mlflow_server.uri, register=True, alias="champion")
    client = connect(mlflow_server.uri)

    parent = client.get_run(logged.parent_run_id)
    assert parent.data.tags["dataset.test_fingerprint"] == "t" * 64
    assert parent.data.metrics["test_nll"] == pytest.approx(0.25)
    assert parent.inputs is not None
    assert parent.inputs.dataset_inputs[0].dataset.digest == ("f" * 64)[:36]
    parent_files = {f.path for f in client.list_artifacts(logged.parent_run_id)}
    assert {"manifest", "plots", "config.yaml", "dataset.json", "report.json"} <= parent_files

    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{logged.parent_run_id}'"
    )
    assert sorted(run.info.run_id for run in children) == sorted(logged.member_run_ids)
    member_run = client.get_run(logged.member_run_ids[1])
    assert member_run.data.params["units"] == "64"
    assert [m.step for m in client.get_metric_history(member_run.info.run_id, "val_loss")] == [0, 1, 2]
    member_files = {f.path for f in client.list_artifacts(member_run.info.run_id)}
    assert {"saved_model", "checkpoint.keras", "tensorboard", "history.csv"} <= member_files
    assert {f.path for f in client.list_artifacts(member_run.info.run_id, "saved_model")} >= {
        "saved_model/saved_model.pb"
    }

    # The registered manifest names the registered member versions and its own version.
    manifest = resolve_manifest(mlflow_server.uri, "track", "champion")
    assert (
        manifest.version == logged.ensemble_version == resolve_version(mlflow_server.uri, "track", "champion")
    )
    for member in manifest.members:
        version = client.get_model_version(member.name, str(member.version))
        assert version.run_id in logged.member_run_ids
        assert str(version.source).endswith("/saved_model")
        assert logged.member_versions[member.name] == member.version
    assert manifest.provenance.parent_run_id == logged.parent_run_id
    registered = client.get_model_version("track", str(manifest.version))
    assert {registered.tags[f"member.{m.name}"] for m in manifest.members} == {
        str(m.version) for m in manifest.members
    }
    assert float(registered.tags["metric.test_nll"]) == pytest.approx(0.25)


def test_every_trained_member_is_recorded_and_only_the_served_ones_registered(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    write_training_output(tmp_path / "out", "trials", members=2, dropped=1)
    logged = record_training(tmp_path / "out", mlflow_server.uri, register=True, alias=None)
    client = connect(mlflow_server.uri)
    assert len(logged.member_run_ids) == 2
    assert len(logged.dropped_run_ids) == 1
    dropped = client.get_run(logged.dropped_run_ids[0])
    assert dropped.data.tags["ensemble.member"] == "trials-m2"
    assert dropped.data.tags["ensemble.served"] == "false"
    assert dropped.data.tags["ensemble.dropped_reason"] == "not kept by the search"
    assert dropped.data.metrics["ensemble_weight"] == 0.0
    assert {f.path for f in client.list_artifacts(dropped.info.run_id)} >= {"saved_model", "member.json"}
    served = client.get_run(logged.member_run_ids[0])
    assert served.data.tags["ensemble.served"] == "true"
    assert served.data.metrics["ensemble_weight"] == pytest.approx(0.5)
    parent = client.get_run(logged.parent_run_id)
    assert parent.data.tags["dropped.trials-m2"] == "not kept by the search"
    assert parent.data.tags["ensemble.weights"] == "uniform: assemble.weights is uniform"
    assert parent.data.params["weight.trials-m2"] == "0.000000"
    assert set(logged.member_versions) == {"trials-m0", "trials-m1"}
    assert not client.search_model_versions("name = 'trials-m2'")


def test_promotion_gate_rollback_and_history(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    v1 = _train(mlflow_server, tmp_path / "a", "promo", "champion", members=2, test_nll=0.3)
    v2 = _train(mlflow_server, tmp_path / "b", "promo", test_nll=0.4)
    v3 = _train(mlflow_server, tmp_path / "c", "promo", test_nll=0.2)
    v4 = _train(mlflow_server, tmp_path / "d", "promo", test_nll=0.1, test_fingerprint="o" * 64)

    code, _, err = _cli(
        "promote", "promo", "--version", str(v2), "--alias", "champion", "--tracking-uri", uri
    )
    assert code == 1
    assert err.count("\n") == 1
    assert "refused" in err
    assert "worse" in err
    assert resolve_version(uri, "promo", "champion") == v1

    code, out, _ = _cli(
        "promote", "promo", "--version", str(v3), "--alias", "champion", "--tracking-uri", uri
    )
    assert code == 0, out
    assert resolve_version(uri, "promo", "champion") == v3
    # v3 has one member: the second member's model no longer carries the alias.
    client = connect(uri)
    assert "champion" not in client.get_registered_model("promo-m1").aliases

    code, _, err = _cli("promote", "promo", "--version", str(v4), "--tracking-uri", uri)
    assert code == 1
    assert "different test data" in err
    assert resolve_version(uri, "promo", "champion") == v3

    code, out, _ = _cli(
        "promote", "promo", "--version", str(v2), "--force", "--reason", "canary", "--tracking-uri", uri
    )
    assert code == 0
    assert "forced" in out
    assert resolve_version(uri, "promo", "champion") == v2
    # The members' registered models carry the alias too.
    member = resolve_manifest(uri, "promo", "champion").members[0]
    assert client.get_model_version_by_alias(member.name, "champion").version == str(member.version)

    code, _, _ = _cli("rollback", "promo", "--alias", "champion", "--tracking-uri", uri)
    assert code == 0
    assert resolve_version(uri, "promo", "champion") == v3
    code, _, _ = _cli("rollback", "promo", "--alias", "champion", "--tracking-uri", uri)
    assert code == 0
    assert resolve_version(uri, "promo", "champion") == v1
    assert client.get_registered_model("promo-m1").aliases["champion"] == "1"
    code, _, err = _cli("rollback", "promo", "--alias", "champion", "--tracking-uri", uri)
    assert code == 1
    assert "no previous holder" in err

    code, out, _ = _cli("registry", "show", "promo", "--tracking-uri", uri)
    assert code == 0
    for word in ("register", "promote", "(forced)", "rollback", "canary"):
        assert word in out
    code, out, _ = _cli("registry", "show", f"promo/{v3}", "--tracking-uri", uri)
    assert code == 0
    assert "promo-m0" in out
    assert "0.2" in out
    code, out, _ = _cli("registry", "list", "--tracking-uri", uri)
    assert code == 0
    assert "promo" in out
    assert "champion" in out


def _disk_versions(repo: Path, model: str) -> list[int]:
    return sorted(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())


def _check_layout_matches_config(repo: Path) -> dict[str, tuple[list[int], dict[str, int]]]:
    entries = read_model_config(repo / "models.config")
    for entry in entries:
        assert entry.base_path == str(repo.resolve() / entry.name)
        assert entry.versions is not None
        assert _disk_versions(repo, entry.name) == sorted(entry.versions)
        for version in entry.versions:
            assert (repo / entry.name / str(version) / "saved_model.pb").is_file()
        assert set(entry.labels.values()) <= set(entry.versions)
    return {entry.name: (sorted(entry.versions or []), entry.labels) for entry in entries}


def test_sync_round_trip(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    repo = tmp_path / "repo"
    v1 = _train(mlflow_server, tmp_path / "a", "syn", "champion", members=2, test_nll=0.3, payload="first")
    v2 = _train(mlflow_server, tmp_path / "b", "syn", "challenger", members=2, test_nll=0.2, payload="second")
    champion, challenger = (
        resolve_manifest(uri, "syn", "champion"),
        resolve_manifest(uri, "syn", "challenger"),
    )
    sync = ["sync", "syn", "--alias", "champion", "--alias", "challenger", "--model-repo", str(repo)]

    # A folder with the same number that did not come from the registry (a local export, say) is replaced.
    stray = repo / champion.members[0].name / str(champion.members[0].version)
    stray.mkdir(parents=True)
    (stray / "saved_model.pb").write_text("not from the registry")

    code, out, err = _cli(*sync, "--tracking-uri", uri)
    assert code == 0, err
    assert (stray / "saved_model.pb").read_text() == f"{champion.members[0].name}:first"
    config = _check_layout_matches_config(repo)
    for old, new in zip(champion.members, challenger.members, strict=True):
        assert config[old.name] == (
            sorted([old.version, new.version]),
            {"champion": old.version, "challenger": new.version},
        )
        payload = (repo / old.name / str(new.version) / "saved_model.pb").read_text()
        assert payload == f"{old.name}:second"

    before = (repo / "models.config").stat().st_mtime_ns
    code, out, _ = _cli(*sync, "--tracking-uri", uri)
    assert code == 0
    assert "unchanged" in out
    assert (repo / "models.config").stat().st_mtime_ns == before

    # Both aliases on the same manifest: one version folder per member, two labels on it. v1 is
    # kept (listed and on disk) for the grace, so backends and gateways can move first.
    code, _, _ = _cli("promote", "syn", "--version", str(v2), "--alias", "champion", "--tracking-uri", uri)
    assert code == 0
    code, out, _ = _cli(*sync, "--tracking-uri", uri)
    assert code == 0
    assert "kept while the move settles" in out
    assert "pruned" not in out
    config = _check_layout_matches_config(repo)
    for old, new in zip(champion.members, challenger.members, strict=True):
        assert config[old.name] == (
            sorted([old.version, new.version]),
            {"champion": new.version, "challenger": new.version},
        )
    # With no grace left, v1 goes.
    code, out, _ = _cli(*sync, "--grace", "0", "--tracking-uri", uri)
    assert code == 0
    assert "pruned" in out
    config = _check_layout_matches_config(repo)
    for member in challenger.members:
        assert config[member.name] == (
            [member.version],
            {"champion": member.version, "challenger": member.version},
        )

    # Staged labels: the new challenger version is listed first, its label moves on the next pass.
    v3 = _train(mlflow_server, tmp_path / "c", "syn", "challenger", members=2, test_nll=0.25, payload="third")
    newest = resolve_manifest(uri, "syn", "challenger")
    assert newest.version == v3 != v1
    code, out, _ = _cli(*sync, "--staged-labels", "--tracking-uri", uri)
    assert code == 0
    assert "waiting" in out
    config = _check_layout_matches_config(repo)
    for old, new in zip(challenger.members, newest.members, strict=True):
        assert config[old.name] == (
            sorted([old.version, new.version]),
            {"champion": old.version, "challenger": old.version},
        )
    code, out, _ = _cli(*sync, "--staged-labels", "--tracking-uri", uri)
    assert code == 0
    assert "waiting" not in out
    config = _check_layout_matches_config(repo)
    for old, new in zip(challenger.members, newest.members, strict=True):
        assert config[old.name][1] == {"champion": old.version, "challenger": new.version}


def test_errors_are_one_line(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    _train(mlflow_server, tmp_path / "a", "errs", "champion", members=2)
    cases = [
        (["registry", "show", "nosuch"], "unknown ensemble 'nosuch'"),
        (["registry", "show", "errs@nosuch"], "has no alias 'nosuch'"),
        (["registry", "show", "errs/99"], "has no version 99"),
        (["promote", "errs", "--version", "99"], "has no version 99"),
        (["sync", "nosuch", "--model-repo", str(tmp_path / "r")], "unknown ensemble"),
        (["promote", "errs", "--version", "1", "--alias", "bad-alias"], "not usable"),
        (
            ["sync", "errs", "--alias", "nosuch", "--alias", "champion", "--model-repo", str(tmp_path / "r")],
            "has no alias 'nosuch'",
        ),
    ]
    for args, message in cases:
        code, _, err = _cli(*args, "--tracking-uri", uri)
        assert code != 0, args
        assert message in err, (args, err)
        assert err.count("\n") == 1, (args, err)

    # A later alias that is not set yet (a challenger on a fresh install) is skipped, not fatal.
    repo = tmp_path / "optional"
    code, out, err = _cli(
        "sync", "errs", "--alias", "champion", "--alias", "challenger", "--model-repo", str(repo),
        "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 0, err
    assert "aliases not set yet, skipped: challenger" in out
    for entry in read_model_config(repo / "models.config"):
        assert set(entry.labels) == {"champion"}

    # A repository for the challenger alone: its first alias must be set, unless --unset-ok, which
    # lists no model until it is (TF Serving starts on that and loads the models once listed).
    alone = [
        "sync",
        "errs",
        "--alias",
        "challenger",
        "--model-repo",
        str(tmp_path / "alone"),
        "--tracking-uri",
        uri,
    ]
    code, _, err = _cli(*alone)
    assert code != 0
    assert "has no alias 'challenger'" in err
    code, out, err = _cli(*alone, "--unset-ok")
    assert code == 0, err
    assert "aliases not set yet, skipped: challenger" in out
    assert (tmp_path / "alone" / "models.config").read_text() == "model_config_list {\n}\n"
    _train(mlflow_server, tmp_path / "b", "errs", "challenger", members=2, test_nll=0.2)
    code, out, err = _cli(*alone, "--unset-ok")
    assert code == 0, err
    entries = read_model_config(tmp_path / "alone" / "models.config")
    assert sorted(e.name for e in entries) == ["errs-m0", "errs-m1"]
    assert all(set(e.labels) == {"challenger"} for e in entries)

    # A manifest whose member version is gone cannot be served.
    connect(uri).delete_model_version("errs-m1", "1")
    code, _, err = _cli("sync", "errs", "--model-repo", str(tmp_path / "r"), "--tracking-uri", uri)
    assert code == 1
    assert "references errs-m1 version 1, which is not registered" in err

    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = _cli("registry", "list", "--tracking-uri", dead)
    assert code == 3
    assert "unreachable" in err
    assert err.count("\n") == 1


def test_online_promotion_refuses_thin_evidence_and_records_both_gates(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """``promote --online`` against a gateway-like server: refused on too little traffic or low
    agreement, accepted once the window holds enough, each decision recorded on the version."""
    import json

    from tests.registry.comparison_server import comparison_server, summary_document

    uri = mlflow_server.uri
    v1 = _train(mlflow_server, tmp_path / "a", "live", "champion", test_nll=0.3)
    v2 = _train(mlflow_server, tmp_path / "b", "live", "challenger", test_nll=0.25)
    gate_args = ["--min-requests", "200", "--min-agreement", "0.95", "--max-p99-ratio", "1.2"]

    def promote(url: str) -> tuple[int, str, str]:
        return _cli(
            "promote", "live", "--alias", "champion", "--version", str(v2), "--online", url,
            *gate_args, "--tracking-uri", uri,
        )  # fmt: skip

    def online_tag() -> dict[str, object]:
        tags = connect(uri).get_model_version("live", str(v2)).tags
        return dict(json.loads(tags["gate.champion.online"]))

    with comparison_server() as gateway:
        path = "/v1/ensembles/live/comparison"
        gateway.serve(
            path, summary_document("live", pairs=40, champion=("champion", v1), challenger=("challenger", v2))
        )
        code, _, err = promote(gateway.url)
        assert code == 1
        assert err.count("\n") == 1
        assert "online: too little traffic: 40 paired requests" in err
        assert "need 200" in err
        assert resolve_version(uri, "live", "champion") == v1
        refused = online_tag()
        assert refused["passed"] is False
        assert refused["gateway"] == gateway.url
        assert refused["thresholds"] == {
            "min_requests": 200, "min_agreement": 0.95, "max_rel_diff": 0.05, "max_p99_ratio": 1.2,
            "max_error_rate_increase": 0.01,
        }  # fmt: skip

        low = summary_document(
            "live", pairs=300, agreement=0.9, champion=("champion", v1), challenger=("challenger", v2)
        )
        gateway.serve(path, low)
        code, _, err = promote(gateway.url)
        assert code == 1
        assert "agreement 0.9000 < 0.95 over 300 rows" in err
        assert online_tag()["evidence"] == low

        enough = summary_document(
            "live", pairs=300, agreement=0.98, champion=("champion", v1), challenger=("challenger", v2)
        )
        gateway.serve(path, enough)
        code, out, err = promote(gateway.url)
        assert code == 0, err
        assert "online: 300 paired requests, agreement 0.9800" in out
    assert resolve_version(uri, "live", "champion") == v2
    accepted = online_tag()
    assert accepted["passed"] is True
    assert accepted["evidence"] == enough
    offline = json.loads(connect(uri).get_model_version("live", str(v2)).tags["gate.champion.offline"])
    assert offline["passed"] is True
    assert "test_nll 0.25 vs 0.3" in offline["reason"]

    code, out, _ = _cli("registry", "show", f"live/{v2}", "--tracking-uri", uri)
    assert code == 0
    assert "promotion gates" in out
    assert "online" in out
    assert "300 paired requests" in out
    code, out, _ = _cli("registry", "show", "live", "--tracking-uri", uri)
    assert "online: 300 paired requests" in out, "the move's reason carries the online evidence"
