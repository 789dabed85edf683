"""docker-compose.yaml: valid Compose, and the one-GPU-box stack the deployment docs describe."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest

from tests.deploy.manifests import (
    COMPOSE_FILE,
    ROOT,
    SCHEMAS,
    compose_command_line,
    expand_defaults,
    load_compose,
)

SERVICES = {"postgres", "mlflow", "sync", "tf-serving", "gateway", "prometheus", "grafana", "trainer"}
CHALLENGER_SERVICES = {"sync-challenger", "tf-serving-challenger"}
"""The challenger profile: the challenger on a TF Serving of its own (docs/deploy.md)."""
BACKENDS = ("tf-serving", "tf-serving-challenger")


def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_compose_matches_the_compose_specification_schema() -> None:
    validator = compose_validator()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(load_compose())]
    assert not errors, errors


def test_schema_rejects_a_misspelt_key() -> None:
    """Guards the check above: the vendored schema is strict about service keys."""
    broken: dict[str, Any] = load_compose()
    broken["services"]["gateway"]["enviroment"] = {}
    assert list(compose_validator().iter_errors(broken))


def test_docker_compose_config_parses_it() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not found (the schema test above still validates the file)")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed (the schema test above still validates the file)")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_stack_has_every_service_and_builds_our_two_targets() -> None:
    services = load_compose()["services"]
    assert set(services) == SERVICES | CHALLENGER_SERVICES
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    assert targets == {"gateway", "trainer"}
    assert services["trainer"]["profiles"] == ["training"], "training runs on demand only"
    profiled = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiled == {"trainer": ["training"], **{name: ["challenger"] for name in CHALLENGER_SERVICES}}
    # A service outside a profile must not wait for one inside it: `up` without the profile would fail.
    for name, service in services.items():
        if name not in profiled:
            assert not set(service.get("depends_on", {})) & set(profiled), name


@pytest.mark.parametrize("name", BACKENDS)
def test_tf_serving_reserves_a_gpu_and_polls_its_config(name: str) -> None:
    service = load_compose()["services"][name]
    assert service["image"].startswith("tensorflow/serving:")
    assert service["image"].endswith("-gpu")
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d["driver"] == "nvidia" and "gpu" in d["capabilities"] and (d.get("count") or d.get("device_ids"))
        for d in devices
    )
    flags = dict(part.split("=", 1) for part in compose_command_line(service)[1:])
    assert int(flags["--model_config_file_poll_wait_seconds"]) > 0
    assert flags["--enable_grpc_healthcheck_service"] == "true"
    assert len(service["volumes"]) == 1
    assert service["volumes"][0].endswith(":/models:ro"), "TF Serving only reads what the sync writes"
    assert "ports" not in service, "backends are reached through the gateway only"


def test_the_challenger_has_a_repository_and_a_gpu_setting_of_its_own() -> None:
    services = load_compose()["services"]
    assert services["tf-serving"]["volumes"] == ["models:/models:ro"]
    assert services["tf-serving-challenger"]["volumes"] == ["models-challenger:/models:ro"]
    assert services["sync-challenger"]["volumes"] == ["models-challenger:/models"]
    assert "models-challenger" in load_compose()["volumes"]
    # GPU 0 by default, as tf-serving's count: 1 gets; CHALLENGER_GPU=1 moves it to a second GPU.
    devices = services["tf-serving-challenger"]["deploy"]["resources"]["reservations"]["devices"]
    assert [expand_defaults(str(i)) for d in devices for i in d["device_ids"]] == ["0"]
    assert "${CHALLENGER_GPU:-0}" in devices[0]["device_ids"]


def test_mlflow_uses_postgres_and_serves_artifacts() -> None:
    services = load_compose()["services"]
    args = compose_command_line(services["mlflow"])
    assert args[:2] == ["mlflow", "server"]
    store = next(a for a in args if a.startswith("--backend-store-uri="))
    assert store.split("=", 1)[1].startswith("postgresql+psycopg://"), "psycopg 3 is the driver installed"
    assert "@postgres:5432/" in store
    assert "--serve-artifacts" in args
    assert any(v.endswith(":/mlartifacts") for v in services["mlflow"]["volumes"])
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_start_order_follows_the_data() -> None:
    """postgres → mlflow → sync (writes models.config) → tf-serving → gateway."""
    services = load_compose()["services"]
    assert services["sync"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["tf-serving"]["depends_on"]["sync"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["tf-serving"]["condition"] == "service_healthy"
    assert services["sync-challenger"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert (
        services["tf-serving-challenger"]["depends_on"]["sync-challenger"]["condition"] == "service_healthy"
    )


def test_backends_are_on_an_internal_network() -> None:
    data = load_compose()
    assert data["networks"]["backend"]["internal"] is True
    services = data["services"]
    for name in ("postgres", "tf-serving", "sync", *CHALLENGER_SERVICES):
        assert services[name]["networks"] == ["backend"], name
    assert "backend" in services["gateway"]["networks"]
    assert "frontend" in services["gateway"]["networks"]
