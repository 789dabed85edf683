"""The gateway's lifecycle in-process: starting without the registry (last-known-good manifest, or none
and retries), aliases moving one by one, and background loops that must not die silently."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from contracts.manifest import Manifest
from registry.errors import NotFound as RegistryNotFound
from registry.errors import Unreachable
from serving import manifest_source
from serving.core import ModelRef
from serving.errors import Unavailable
from serving.gateway import Gateway
from serving.last_good import LastGoodStore
from serving.manifest_source import ManifestLoadError, ServedManifests
from serving.settings import GatewaySettings
from serving.testing import N_FEATURES, free_port, make_manifest, start_fake_backend, stop_process


class Registry:
    """A resolver standing in for MLflow: answers, is down, or says no."""

    def __init__(self) -> None:
        self.manifests = {"champion": make_manifest(version=3), "challenger": make_manifest(version=4)}
        self.error: Exception | None = None
        self.calls = 0

    def resolve(self, uri: str, name: str, alias: str) -> Manifest:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.manifests[alias]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    fake = Registry()
    real = manifest_source.registry_port()
    port: Callable[[], manifest_source.RegistryPort] = lambda: replace(real, resolve=fake.resolve)  # noqa: E731
    monkeypatch.setattr(manifest_source, "registry_port", port)
    return fake


def settings(tmp_path: Path, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "tracking_uri": "http://mlflow.invalid:5000",
        "ensemble": "toy",
        "aliases": ["champion", "challenger"],
        # Nothing listens there: the members are down, which readiness reports.
        "backends": [f"127.0.0.1:{free_port()}"],
        "last_good_manifest": tmp_path / "state" / "last-good.json",
        "poll_interval_s": 0.05,
        **overrides,
    }
    return GatewaySettings(**values)  # type: ignore[arg-type]


def test_the_store_round_trips_and_refuses_what_is_not_its_own(tmp_path: Path) -> None:
    path = tmp_path / "last-good.json"
    store = LastGoodStore(path, "registry A")
    assert store.load() is None
    served = ServedManifests(default=make_manifest(version=3), labels={"champion": make_manifest(version=3)})
    store.save(served)
    saved = store.load()
    assert saved is not None
    assert saved.served == served
    assert saved.saved_at.endswith("Z")
    assert not list(tmp_path.glob(".*tmp"))  # written beside, then renamed
    with pytest.raises(ManifestLoadError, match="was saved from 'registry A', not from 'registry B'"):
        LastGoodStore(path, "registry B").load()
    path.write_text('{"format": 1, "source": "registry A", "default": {"name": "toy"}, "labels": {}}')
    with pytest.raises(ManifestLoadError, match="holds no valid manifest"):
        store.load()
    path.write_text("{")
    with pytest.raises(ManifestLoadError, match="cannot read"):
        store.load()


def test_unreachable_registry_at_start_serves_the_last_known_good(tmp_path: Path, registry: Registry) -> None:
    config = settings(tmp_path)

    async def scenario() -> None:
        first = await Gateway.open(config)  # the registry answers: the snapshot is saved
        await first.close()
        saved = json.loads(config.last_good_manifest.read_text())  # type: ignore[union-attr]
        assert saved["default"]["version"] == 3
        assert set(saved["labels"]) == {"champion", "challenger"}

        registry.error = Unreachable("MLflow at http://mlflow.invalid:5000 is unreachable after 4 attempts")
        gateway = await Gateway.open(config)
        try:
            served = gateway.core.loaded
            assert served is not None
            assert served.default.version == 3
            assert {label: m.version for label, m in served.labels.items()} == {
                "champion": 3,
                "challenger": 4,
            }
            assert gateway.from_last_good is not None
            assert gateway.metrics.registry.get_sample_value("ensemble_manifest_last_good") == 1.0
            _, reason = await gateway.check_ready()
            assert reason.startswith(
                f"serving the last-known-good manifest saved {gateway.from_last_good.saved_at}"
            )
            assert "unreachable after 4 attempts" in reason

            # The registry comes back with the same answer: nothing to switch, the flag goes.
            registry.error = None
            gateway.start_background()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if gateway.from_last_good is None:
                    break
            assert gateway.from_last_good is None
            assert gateway.metrics.registry.get_sample_value("ensemble_manifest_last_good") == 0.0
            _, reason = await gateway.check_ready()
            assert "last-known-good" not in reason
        finally:
            await gateway.close()

    asyncio.run(scenario())


def test_with_nothing_saved_it_waits_for_the_registry_instead_of_exiting(
    tmp_path: Path, registry: Registry
) -> None:
    config = settings(tmp_path)
    registry.error = Unreachable("MLflow at http://mlflow.invalid:5000 is unreachable")

    async def scenario() -> None:
        gateway = await Gateway.open(config)
        try:
            assert gateway.core.loaded is None
            with pytest.raises(Unavailable, match="no ensemble manifest loaded yet"):
                await gateway.core.predict(ModelRef("toy"), {})
            ready, reason = await gateway.check_ready()
            assert not ready
            assert "unreachable" in reason
            assert reason.endswith("retrying")
            gateway.start_background()
            await asyncio.sleep(
                0.3
            )  # tries at 0.05 s, then 0.05 s apart (the poll interval caps the backoff)
            assert gateway.core.loaded is None
            tries = registry.calls
            assert tries >= 3
            registry.error = None
            for _ in range(100):
                await asyncio.sleep(0.02)
                if gateway.core.loaded is not None:
                    break
            served = gateway.core.loaded
            assert served is not None
            assert served.default.version == 3
            # ...and what it now serves is saved for the next start (written off the event loop).
            assert config.last_good_manifest is not None
            for _ in range(100):
                if config.last_good_manifest.is_file():
                    break
                await asyncio.sleep(0.02)
            assert json.loads(config.last_good_manifest.read_text())["default"]["version"] == 3
            failed = gateway.metrics.registry.get_sample_value(
                "ensemble_manifest_reloads_total", {"outcome": "failed"}
            )
            assert failed is not None
            assert failed >= tries
        finally:
            await gateway.close()

    asyncio.run(scenario())


def test_a_registry_that_answers_no_is_still_an_error_at_start(tmp_path: Path, registry: Registry) -> None:
    registry.error = RegistryNotFound("ensemble 'toy' has no alias 'champion'")
    with pytest.raises(ManifestLoadError, match="has no alias 'champion'"):
        asyncio.run(Gateway.open(settings(tmp_path)))


def test_a_last_good_file_that_cannot_be_written_is_counted_not_fatal(
    tmp_path: Path, registry: Registry
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = settings(tmp_path, last_good_manifest=blocker / "last-good.json")

    async def scenario() -> None:
        gateway = await Gateway.open(config)
        try:
            assert gateway.core.loaded is not None
            sample = gateway.metrics.registry.get_sample_value
            assert sample("ensemble_manifest_last_good_saves_total", {"outcome": "failed"}) == 1.0
        finally:
            await gateway.close()

    asyncio.run(scenario())


def test_a_background_loop_that_dies_is_logged(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        gateway = await Gateway.open(settings(tmp_path))

        async def broken() -> None:
            raise RuntimeError("a bug in the watch loop")

        monkeypatch.setattr(gateway, "_watch", broken)
        try:
            gateway.start_background()
            await asyncio.sleep(0.05)
        finally:
            await gateway.close()

    with caplog.at_level("ERROR", logger="serving.gateway"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == ["the manifest watch stopped: a bug in the watch loop"]


def test_each_alias_moves_once_its_own_members_are_loaded_where_it_places_them(
    tmp_path: Path, registry: Registry
) -> None:
    """Each alias moves on its own. A challenger on dead backends of its own never holds the
    champion's move back (the champion's old version would soon be unloaded under it). And a
    promotion to the version the challenger serves waits until its members are loaded on the
    champion's backends, not only on the challenger's."""
    challenger = registry.manifests["challenger"]  # v4, its members at version 2
    registry.manifests["challenger"] = challenger.model_copy(
        update={"members": [m.model_copy(update={"version": 2}) for m in challenger.members]}
    )
    port = free_port()  # the champion's backend: the members at version 1 only
    backend = start_fake_backend(port, [m.name for m in registry.manifests["champion"].members])
    config = settings(
        tmp_path,
        backends=[f"127.0.0.1:{port}"],
        alias_backends={"challenger": [f"127.0.0.1:{free_port()}"]},  # nothing listens there
    )
    x = np.zeros((1, N_FEATURES), dtype=np.float32)

    async def scenario() -> None:
        gateway = await Gateway.open(config)

        def versions() -> dict[str, int | None]:
            served = gateway.core.loaded
            assert served is not None
            return {"default": served.default.version} | {a: m.version for a, m in served.labels.items()}

        def waits() -> float:
            value = gateway.metrics.registry.get_sample_value(
                "ensemble_manifest_reloads_total", {"outcome": "waiting"}
            )
            return value or 0.0

        try:
            gateway.start_background()
            registry.manifests["champion"] = make_manifest(version=5)
            for _ in range(200):
                await asyncio.sleep(0.02)
                if versions()["default"] == 5:
                    break
            assert versions() == {"default": 5, "champion": 5, "challenger": 4}
            assert (await gateway.core.predict(ModelRef("toy"), {"x": x})).version == 5
            assert (await gateway.check_ready())[0]

            # The champion alias moves to the challenger's version: a manifest of its own, as the
            # registry answers each alias apart. Its members (version 2) are not on the champion's
            # backend, so the champion keeps version 5, and keeps answering.
            before = waits()
            registry.manifests["champion"] = registry.manifests["challenger"].model_copy(deep=True)
            for _ in range(200):
                await asyncio.sleep(0.02)
                if waits() >= before + 3:
                    break
            assert waits() >= before + 3
            assert versions() == {"default": 5, "champion": 5, "challenger": 4}
            assert (await gateway.core.predict(ModelRef("toy"), {"x": x})).version == 5
        finally:
            await gateway.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_process(backend)
