"""The traffic policy as a gateway setting: validation in one line, from file, env and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serving.settings import GatewaySettings
from serving.traffic.policy import TrafficPolicy, parse_traffic_option

REGISTRY: dict[str, Any] = {
    "tracking_uri": "http://mlflow:5000",
    "ensemble": "digits",
    "aliases": ["champion", "challenger"],
}


def first_error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[str, str]:
    first = exc.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), str(first["msg"])


def test_defaults_send_nothing_to_the_challenger() -> None:
    policy = TrafficPolicy()
    assert (policy.champion, policy.challenger) == ("champion", "challenger")
    assert policy.shadow_fraction == 0
    assert policy.canary_percent == 0
    assert policy.sticky_header == "x-user-id"
    assert (policy.window_requests, policy.window_s) == (1000, 600.0)


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"shadow_fraction": 1.5}, "shadow_fraction", "less than or equal to 1"),
        ({"shadow_fraction": -0.1}, "shadow_fraction", "greater than or equal to 0"),
        ({"canary_percent": 101}, "canary_percent", "less than or equal to 100"),
        ({"shadow_concurrency": 0}, "shadow_concurrency", "greater than or equal to 1"),
        ({"window_requests": 0}, "window_requests", "greater than or equal to 1"),
        ({"window_s": 0}, "window_s", "greater than 0"),
        ({"sticky_header": "x user"}, "sticky_header", "plain header name"),
        ({"sticky_header": "grpc-timeout"}, "sticky_header", "not grpc-*"),
        ({"sticky_header": "x-key-bin"}, "sticky_header", "*-bin"),
        ({"challenger": "v-2"}, "challenger", "[a-zA-Z0-9_]+"),
        ({"challenger": "champion"}, "", "must be different aliases"),
        ({"shadow": 0.5}, "shadow", "Extra inputs are not permitted"),
    ],
)
def test_bad_policies_are_refused_with_one_line(fields: dict[str, object], where: str, says: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TrafficPolicy.model_validate(fields)
    loc, message = first_error(exc)
    assert loc == where
    assert says in message
    assert "\n" not in message


def test_sticky_header_is_lower_cased() -> None:
    assert TrafficPolicy(sticky_header=" X-User-ID ").sticky_header == "x-user-id"


def test_policy_in_settings_must_name_the_served_ensemble_and_aliases() -> None:
    settings = GatewaySettings(**REGISTRY, traffic={"digits": {"shadow_fraction": 0.25}})
    assert settings.traffic["digits"].shadow_fraction == 0.25

    cases = [
        (
            {**REGISTRY, "traffic": {"iris": {}}},
            "traffic policy for ensemble 'iris', but the gateway serves 'digits'",
        ),
        (
            {**REGISTRY, "aliases": ["champion"], "traffic": {"digits": {}}},
            "names alias 'challenger', which is not served (aliases: champion)",
        ),
        ({"manifest": "ensemble.json", "traffic": {"digits": {}}}, "serve from the registry"),
    ]
    for fields, says in cases:
        with pytest.raises(ValidationError) as exc:
            GatewaySettings(**fields)  # type: ignore[arg-type]
        _, message = first_error(exc)
        assert says in message
        assert "\n" not in message


def test_policy_from_env_file_and_flags_merges_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "tracking_uri: http://mlflow:5000\nensemble: digits\naliases: [champion, challenger]\n"
        "traffic:\n  digits:\n    shadow_fraction: 0.5\n    canary_percent: 10\n"
    )
    monkeypatch.setenv("ENSEMBLE_TRAFFIC", '{"digits": {"sticky_header": "x-tenant"}}')
    flags = parse_traffic_option(["digits:canary_percent=20"])
    settings = GatewaySettings.load(config, traffic=flags)
    policy = settings.traffic["digits"]
    assert policy.shadow_fraction == 0.5  # the file
    assert policy.sticky_header == "x-tenant"  # the environment
    assert policy.canary_percent == 20  # the flag wins over the file
    assert settings.config_file == config


def test_traffic_flag_parsing() -> None:
    assert parse_traffic_option(["digits:shadow_fraction=0.1, canary_percent=20", "digits:window_s=60"]) == {
        "digits": {"shadow_fraction": "0.1", "canary_percent": "20", "window_s": "60"}
    }
    for bad, says in [
        ("digits", "must be NAME:KEY=VALUE"),
        (":canary_percent=1", "must be NAME:KEY=VALUE"),
        ("digits:canary_percent", "'canary_percent' must be KEY=VALUE"),
        ("digits:=3", "must be KEY=VALUE"),
    ]:
        with pytest.raises(ValueError, match="--traffic") as exc:
            parse_traffic_option([bad])
        assert says in str(exc.value)


def test_reload_reads_the_file_again_with_the_same_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("ensemble: digits\ntracking_uri: http://m:5000\naliases: [champion, challenger]\n")
    settings = GatewaySettings.load(config, backends=["b:8500"])
    assert settings.traffic == {}
    config.write_text(
        "ensemble: digits\ntracking_uri: http://m:5000\naliases: [champion, challenger]\n"
        "traffic: {digits: {shadow_fraction: 1.0}}\n"
    )
    fresh = settings.reload()
    assert fresh.traffic["digits"].shadow_fraction == 1.0
    assert fresh.backends == ["b:8500"], "the flags given at start still apply"
    assert fresh.config_file == config
