"""Hot reload: the traffic policy follows the config file as it changes; a bad file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from serving.settings import GatewaySettings
from serving.traffic.controller import TrafficController
from serving.traffic.reload import TrafficReloader, TrafficReloadError, watch_traffic
from tests.serving.traffic.helpers import until

BASE = "tracking_uri: http://mlflow:5000\nensemble: digits\naliases: [champion, challenger]\n"
SERVED = {"champion": 1, "challenger": 2}


def write(path: Path, text: str) -> None:
    """Write and move the modification time on, so a change within the clock's tick is still seen."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    write(path, BASE + "traffic:\n  digits: {shadow_fraction: 0.1}\n")
    return path


def test_a_changed_file_gives_the_new_policies(config: Path) -> None:
    settings = GatewaySettings.load(config, backends=["b:8500"])
    reloader = TrafficReloader(settings)
    assert reloader.poll() is None, "unchanged since start"
    write(config, BASE + "traffic:\n  digits: {shadow_fraction: 1.0, canary_percent: 20}\n")
    policies = reloader.poll()
    assert policies is not None
    assert (policies["digits"].shadow_fraction, policies["digits"].canary_percent) == (1.0, 20.0)
    assert reloader.poll() is None


def test_a_bad_file_is_reported_once_and_changes_nothing(config: Path) -> None:
    reloader = TrafficReloader(GatewaySettings.load(config))
    write(config, BASE + "traffic:\n  digits: {canary_percent: 500}\n")
    with pytest.raises(TrafficReloadError) as info:
        reloader.poll()
    message = str(info.value)
    assert message == f"{config}: traffic.digits.canary_percent: Input should be less than or equal to 100"
    assert reloader.poll() is None, "reported once, not on every poll"

    write(config, BASE + "traffic:\n  digits: {shadow_fraction: [\n")
    with pytest.raises(TrafficReloadError) as info:
        reloader.poll()
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(config))

    config.unlink()
    with pytest.raises(TrafficReloadError, match="cannot read"):
        reloader.poll()
    assert reloader.poll() is None

    write(config, BASE + "traffic:\n  digits: {shadow_fraction: 0.3}\n")
    policies = reloader.poll()
    assert policies is not None
    assert policies["digits"].shadow_fraction == 0.3


def test_other_changed_settings_are_named_and_left_for_a_restart(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = TrafficReloader(GatewaySettings.load(config))
    write(config, BASE + "rest_port: 9999\nlog_level: debug\ntraffic:\n  digits: {shadow_fraction: 0.2}\n")
    with caplog.at_level(logging.WARNING):
        policies = reloader.poll()
    assert policies is not None
    assert policies["digits"].shadow_fraction == 0.2
    assert "rest_port, log_level changed" in caplog.text
    assert "restart" in caplog.text


def test_flags_still_win_after_a_reload(config: Path) -> None:
    settings = GatewaySettings.load(config, traffic={"digits": {"canary_percent": 50}})
    reloader = TrafficReloader(settings)
    write(config, BASE + "traffic:\n  digits: {shadow_fraction: 0.7, canary_percent: 5}\n")
    policies = reloader.poll()
    assert policies is not None
    assert (policies["digits"].shadow_fraction, policies["digits"].canary_percent) == (0.7, 50.0)


def test_watch_applies_a_changed_policy_to_the_running_controller(config: Path) -> None:
    settings = GatewaySettings.load(config)
    controller = TrafficController(settings.traffic)
    errors: list[TrafficReloadError] = []

    def side_of_user() -> str | None:
        return controller.route(
            "digits", label=None, version=None, headers={"x-user-id": "u"}, served=SERVED
        ).answer

    def canary_percent() -> float | None:
        policy = controller.policy("digits")
        return policy.canary_percent if policy is not None else None

    async def scenario() -> None:
        watcher = asyncio.create_task(
            watch_traffic(TrafficReloader(settings), 0.01, controller.update, errors.append)
        )
        try:
            assert side_of_user() == "champion"
            write(config, BASE + "traffic:\n  digits: {canary_percent: 100}\n")
            await until(lambda: canary_percent() == 100)
            assert side_of_user() == "challenger"
            write(config, BASE + "traffic:\n  digits: {canary_percent: -1}\n")
            await until(lambda: bool(errors))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    asyncio.run(scenario())
    assert len(errors) == 1
    assert canary_percent() == 100, "the bad file left the policy in force"


def test_without_a_config_file_there_is_nothing_to_watch() -> None:
    settings = GatewaySettings(tracking_uri="http://m:5000", ensemble="digits")
    reloader = TrafficReloader(settings)
    assert not reloader.watching
    assert reloader.poll() is None
    asyncio.run(asyncio.wait_for(watch_traffic(reloader, 0.01, lambda _: None, lambda _: None), timeout=5))
