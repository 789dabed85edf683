"""Gateway settings precedence and the manifest sources (file and registry) with hot reload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.manifest import Manifest
from registry.errors import NotFound as RegistryNotFound
from serving.manifest_source import (
    FileManifestSource,
    ManifestLoadError,
    RegistryManifestSource,
    ServedManifests,
    moved,
    placements,
    switchable,
    watch,
)
from serving.settings import GatewaySettings
from serving.testing import make_manifest


def test_defaults_match_tf_serving_ports() -> None:
    settings = GatewaySettings()
    assert (settings.grpc_port, settings.rest_port) == (8500, 8501)
    assert settings.auth_token is None
    assert settings.hedge_after_s is None


def test_flags_beat_env_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("grpc_port: 9000\nrest_port: 9001\nmember_deadline_s: 0.5\nbackends: [a:1]\n")
    monkeypatch.setenv("ENSEMBLE_REST_PORT", "9101")
    monkeypatch.setenv("ENSEMBLE_BACKENDS", "b:2, c:3")
    monkeypatch.setenv("ENSEMBLE_MEMBER_BACKENDS", '{"m0": ["d:4"]}')
    monkeypatch.setenv("ENSEMBLE_AUTH_TOKEN", "s3cret")
    settings = GatewaySettings.load(config, grpc_port=9200, rest_port=None)
    assert settings.grpc_port == 9200  # flag
    assert settings.rest_port == 9101  # env over YAML
    assert settings.member_deadline_s == 0.5  # YAML over default
    assert settings.backends == ["b:2", "c:3"]
    assert settings.addresses_for("m0") == ["d:4"]
    assert settings.addresses_for("m1") == ["b:2", "c:3"]
    assert settings.auth_token is not None
    assert settings.auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backends": ["nohost"]}, "must be HOST:PORT"),
        ({"manifest": Path("m.json"), "tracking_uri": "http://x", "ensemble": "e"}, "not both"),
        ({"tracking_uri": "http://x"}, "needs both"),
        ({"aliases": ["bad-alias"]}, "[a-zA-Z0-9_]+"),
        ({"grpc_port": 70000}, "less than or equal"),
        ({"alias_backends": {"challenger": ["nohost"]}}, "must be HOST:PORT"),
        ({"alias_backends": {"challenger": []}}, "alias 'challenger' needs at least one backend address"),
        (
            {
                "tracking_uri": "http://x",
                "ensemble": "e",
                "aliases": ["champion"],
                "alias_backends": {"canary": ["a:1"]},
            },
            "alias_backends names canary, which is not a served alias",
        ),
    ],
)
def test_bad_settings_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("+", r"\+")):
        GatewaySettings.load(None, **overrides)


def test_an_alias_placement_wins_over_member_overrides_and_shared_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENSEMBLE_ALIAS_BACKENDS", '{"challenger": ["e:5", "f:6"]}')
    settings = GatewaySettings.load(
        None,
        tracking_uri="http://mlflow",
        ensemble="toy",
        aliases=["champion", "challenger"],
        backends=["a:1"],
        member_backends={"toy-m0": ["b:2"]},
    )
    assert settings.addresses_for("toy-m0", "challenger") == ["e:5", "f:6"]
    assert settings.addresses_for("toy-m1", "challenger") == ["e:5", "f:6"]
    assert settings.addresses_for("toy-m0", "champion") == ["b:2"]
    assert settings.addresses_for("toy-m1", "champion") == ["a:1"]
    assert settings.addresses_for("toy-m1") == ["a:1"]


def test_placements_put_the_default_manifest_under_its_alias() -> None:
    champion, challenger = make_manifest(version=1), make_manifest(version=2)
    served = ServedManifests(default=champion, labels={"champion": champion, "challenger": challenger})
    placed = {id(member): alias for alias, member in placements(served)}
    assert [placed[id(m)] for m in champion.members] == ["champion"] * len(champion.members)
    assert [placed[id(m)] for m in challenger.members] == ["challenger"] * len(challenger.members)
    assert all(alias is None for alias, _ in placements(ServedManifests(default=champion)))


def test_each_alias_moves_once_its_own_manifest_is_ready() -> None:
    v1, v2, v3, v4 = (make_manifest(version=v) for v in (1, 2, 3, 4))
    now = ServedManifests(default=v1, labels={"champion": v1, "challenger": v2})

    def served(champion: Manifest, challenger: Manifest | None = None) -> ServedManifests:
        labels = {"champion": champion} | ({"challenger": challenger} if challenger else {})
        return ServedManifests(default=champion, labels=labels)

    def ready_only(*versions: int) -> Callable[[Manifest], bool]:
        return lambda manifest: manifest.version in versions

    # The champion moves while the challenger's backends are down: the unchanged challenger needs
    # no check, and does not hold the move back.
    assert switchable(served(v3, v2), now, ready_only(3)) == served(v3, v2)
    # The challenger moves to a version not loaded yet: it keeps its manifest, the champion moves.
    assert switchable(served(v3, v4), now, ready_only(3)) == served(v3, v2)
    # Nothing ready: what is served stays, alias by alias.
    assert switchable(served(v3, v4), now, ready_only()) == now
    # An alias set for the first time waits until it is ready; one that is gone is dropped.
    assert switchable(served(v1, v4), served(v1), ready_only()) == served(v1)
    assert switchable(served(v1), now, ready_only()) == served(v1)
    # Before anything is served, a default that is not ready cannot be served.
    assert switchable(served(v1), None, ready_only()) is None
    assert switchable(served(v1, v2), None, ready_only(1)) == served(v1)


def test_a_version_is_new_to_an_alias_that_does_not_serve_it_yet() -> None:
    v1, v2, v3 = (make_manifest(version=v) for v in (1, 2, 3))
    now = ServedManifests(default=v1, labels={"champion": v1, "challenger": v2})
    # A promotion: v2 is served, but as the challenger; the champion's backends may lack it.
    promoted = v2.model_copy(deep=True)
    after = ServedManifests(default=promoted, labels={"champion": promoted, "challenger": v2})
    assert [m is promoted for m in moved(after, now)] == [True]
    assert switchable(after, now, lambda m: False) == now
    # Unchanged aliases are not checked again; a new alias and a moved one are, each once.
    assert moved(now, now) == []
    both = ServedManifests(default=v3, labels={"champion": v3, "challenger": v2, "canary": v1})
    assert [m.version for m in moved(both, now)] == [3, 1]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        GatewaySettings.load(tmp_path / "nope.yaml")


def test_file_source_reloads_on_change_and_reports_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.json"
    make_manifest(version=1).save(path)
    source = FileManifestSource(path)

    async def scenario() -> None:
        first = await source.load()
        assert first.default.version == 1
        assert await source.load() is first  # unchanged file: not re-parsed
        make_manifest((0.2, 0.3, 0.5), version=2).save(path)
        second = await source.load()
        assert second.default.version == 2
        path.write_text('{"name": "toy"}')
        with pytest.raises(ManifestLoadError, match="not a valid manifest"):
            await source.load()
        path.unlink()
        with pytest.raises(ManifestLoadError, match="cannot read"):
            await source.load()

    asyncio.run(scenario())


def test_registry_source_resolves_every_alias() -> None:
    manifests = {"champion": make_manifest(version=3), "challenger": make_manifest(version=4)}
    calls: list[tuple[str, str, str]] = []

    def resolve(uri: str, name: str, alias: str) -> Manifest:
        calls.append((uri, name, alias))
        if alias not in manifests:
            raise LookupError(f"ensemble {name!r} has no alias {alias!r}\nmore detail")
        return manifests[alias]

    async def scenario() -> ServedManifests:
        source = RegistryManifestSource("http://mlflow", "toy", ["champion", "challenger"], resolve=resolve)
        served = await source.load()
        bad = RegistryManifestSource("http://mlflow", "toy", ["gone"], resolve=resolve)
        with pytest.raises(
            ManifestLoadError, match=r"^cannot resolve toy@gone: ensemble .toy. has no alias .gone.$"
        ):
            await bad.load()
        return served

    served = asyncio.run(scenario())
    assert served.default.version == 3
    assert {label: m.version for label, m in served.labels.items()} == {"champion": 3, "challenger": 4}
    assert calls[:2] == [("http://mlflow", "toy", "champion"), ("http://mlflow", "toy", "challenger")]


def test_registry_source_skips_a_later_alias_not_set_yet() -> None:
    def resolve(uri: str, name: str, alias: str) -> Manifest:
        if alias == "champion":
            return make_manifest(version=3)
        raise RegistryNotFound(f"ensemble {name!r} has no alias {alias!r}")

    served = asyncio.run(RegistryManifestSource("u", "toy", ["champion", "challenger"], resolve).load())
    assert served.default.version == 3
    assert set(served.labels) == {"champion"}
    first_missing = RegistryManifestSource("u", "toy", ["challenger", "champion"], resolve)
    with pytest.raises(ManifestLoadError, match="has no alias 'challenger'"):
        asyncio.run(first_missing.load())


def test_watch_offers_a_declined_snapshot_again(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.json"
    make_manifest(version=1).save(path)
    source = FileManifestSource(path)
    offers: list[int | None] = []

    async def on_change(served: ServedManifests) -> bool:
        offers.append(served.default.version)
        return len(offers) >= 3  # members "load" on the third poll

    async def scenario() -> None:
        current = await source.load()
        make_manifest(version=2).save(path)
        task = asyncio.create_task(watch(source, current, 0.02, on_change, lambda e: None))
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(scenario())
    assert offers[:3] == [2, 2, 2]
    assert len(offers) == 3  # taken on the third offer, then unchanged


def test_watch_hands_over_changes_and_survives_errors(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.json"
    make_manifest(version=1).save(path)
    source = FileManifestSource(path)
    changes: list[int | None] = []
    errors: list[str] = []

    async def on_change(served: ServedManifests) -> bool:
        changes.append(served.default.version)
        return True

    async def scenario() -> None:
        current = await source.load()
        task = asyncio.create_task(watch(source, current, 0.02, on_change, lambda e: errors.append(str(e))))
        await asyncio.sleep(0.1)
        path.write_text("not json")
        await asyncio.sleep(0.1)
        make_manifest(version=2).save(path)
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert changes == [2]
    assert errors
    assert "not a valid manifest" in errors[0]
