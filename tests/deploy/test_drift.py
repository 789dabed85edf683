"""Nothing in the deployment files has drifted from the code.

Ports, TF Serving flags, ``ENSEMBLE_*`` variables (fields of ``GatewaySettings``, and values it
accepts), ``ensemble`` / ``mlflow server`` command lines (parsed by the real CLIs), the drain
timing, the training config, and the metric names in alerts, dashboard and autoscaling (all
defined by ``serving/metrics.py``, with the labels used).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import numpy as np
import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts.manifest import OutputKind
from registry import sync as registry_sync
from serving.metrics import GatewayMetrics
from serving.settings import ENV_PREFIX, GatewaySettings
from serving.traffic.comparison import ComparisonWindow, MemberObservation, SideObservation
from serving.traffic.metrics import TrafficMetrics
from tests.deploy.manifests import (
    INSTALL_HINT,
    K8S,
    ROOT,
    WITH_CHALLENGER_BACKENDS,
    by_kind,
    command_line,
    compose_command_line,
    container,
    container_env,
    dockerfile_instructions,
    exec_form,
    expand_defaults,
    find_tool,
    kubectl_problem,
    load_compose,
    render,
)

SERVING_OVERLAYS = ("overlays/dev", "overlays/prod", *WITH_CHALLENGER_BACKENDS)
TRAINING_OVERLAYS = ("overlays/dev/training", "overlays/prod/training")

TF_SERVING_VERSION = "2.19.1"
"""The TF Serving release the flags below were read from (tensorflow_serving/model_servers/main.cc)."""
TF_SERVING_FLAGS = frozenset(
    {
        "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
        "rest_api_enable_cors_support", "enable_batching", "allow_version_labels_for_unavailable_models",
        "batching_parameters_file", "model_config_file", "model_config_file_poll_wait_seconds",
        "model_name", "model_base_path", "num_load_threads", "num_unload_threads",
        "max_num_load_retries", "load_retry_interval_micros", "file_system_poll_wait_seconds",
        "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism", "use_alts_credentials", "platform_config_file",
        "saved_model_tags", "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
        "num_request_iterations_for_warmup", "version", "monitoring_config_file",
        "prefer_tflite_model", "enable_profiler", "thread_pool_factory_config_file",
        "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    }
)  # fmt: skip

needs_kubectl = pytest.mark.skipif(kubectl_problem() is not None, reason=kubectl_problem() or "")


# --- helpers -------------------------------------------------------------------------------------
def ensemble_app() -> Any:
    """The ``ensemble`` command group (typer's own click, so duck-typed here)."""
    from cli.main import build_app

    return typer.main.get_command(build_app())


def parse_cli(group: Any, argv: list[str], where: str) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` (after the program name) with the real CLI; fail with its own message."""
    assert argv, f"{where}: no subcommand"
    name, rest = argv[0], argv[1:]
    sub = group.commands.get(name)
    assert sub is not None, f"{where}: `{group.name or 'ensemble'} {name}` is not a command"
    return name, parse_command(sub, name, rest, where)


def parse_command(command: Any, name: str, args: list[str], where: str) -> dict[str, Any]:
    """The parameters ``command`` parses from ``args``, without running it."""
    try:
        ctx = command.make_context(name, list(args))
    except Exception as exc:  # click's and typer's vendored click raise look-alike usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise AssertionError(f"{where}: `{name} {' '.join(args)}`: {message}") from None
    return dict(ctx.params)


def substitute(arg: str, env: dict[str, str | None]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args, with the container's environment."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in env and env[name] is not None:
            return str(env[name])
        return match.group(0)

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, arg)


def k8s_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str | None]:
    env = container_env(objects, c)
    # Values the kubelet fills in at run time.
    env.setdefault("JOB_COMPLETION_INDEX", "0")
    for var in c.get("env", []):
        if "resourceFieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = "2"
    return env


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (TF Serving's flag style)."""
    result: dict[str, str] = {}
    for arg in args:
        assert arg.startswith("--"), f"TF Serving flag {arg!r} must be --name=value"
        assert "=" in arg, f"TF Serving flag {arg!r} must be --name=value"
        name, _, value = arg[2:].partition("=")
        result[name] = value
    return result


def ensemble_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(where, container, argv after `ensemble`) for every container that runs our CLI."""
    found = []
    for obj in objects:
        template = obj.get("spec", {}).get("template", {}).get("spec")
        if not template:
            continue
        for c in template.get("initContainers", []) + template.get("containers", []):
            line = command_line(c)
            if line[:1] == ["ensemble"]:
                env = k8s_env(objects, c)
                found.append(
                    (
                        f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}",
                        c,
                        [substitute(a, env) for a in line[1:]],
                    )
                )
            elif not line and "gateway" in c["image"]:
                found.append((f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", c, ["serve"]))
    return found


def gateway_entrypoint() -> list[str]:
    entry = [i for i in dockerfile_instructions() if i.stage == "gateway" and i.keyword == "ENTRYPOINT"]
    assert len(entry) == 1
    parsed = exec_form(entry[0].value)
    assert parsed is not None, "the gateway ENTRYPOINT must be exec form"
    return parsed


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    for key in [k for k in list(__import__("os").environ) if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, "secret-from-a-secret" if value is None else value)
    return GatewaySettings()


# --- environment variables -------------------------------------------------------------------------
def all_ensemble_env_names() -> dict[str, str]:
    """Every ENSEMBLE_* name in the deployment files, with where it was found."""
    names: dict[str, str] = {}
    for service, spec in load_compose()["services"].items():
        environment = spec.get("environment", {})
        keys = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        for key in keys:
            names.setdefault(key, f"compose service {service}")
    for instruction in dockerfile_instructions():
        if instruction.keyword == "ENV":
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction.value):
                names.setdefault(key, "Dockerfile")
    for path in list(K8S.rglob("*.yaml")) + list(K8S.rglob("*.env")):
        for key in re.findall(r"\b(ENSEMBLE_[A-Z0-9_]+)\b", path.read_text()):
            names.setdefault(key, str(path.relative_to(ROOT)))
    return {name: where for name, where in names.items() if name.startswith(ENV_PREFIX)}


def test_every_ensemble_variable_is_a_gateway_setting() -> None:
    from training.study import STORAGE_ENV  # the one variable the training pods read

    names = all_ensemble_env_names()
    assert "ENSEMBLE_BACKENDS" in names, "the scan found the gateway's variables"
    assert names.pop(STORAGE_ENV, "").startswith("k8s/"), "the training Job names the study's storage"
    fields = set(GatewaySettings.model_fields)
    unknown = {name: where for name, where in names.items() if name[len(ENV_PREFIX) :].lower() not in fields}
    assert not unknown, f"not fields of GatewaySettings: {unknown}"


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_k8s_gateway_settings_load(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    gateway = container(by_kind(objects, "Deployment")["gateway"], "gateway")
    settings = settings_from(k8s_env(objects, gateway), monkeypatch)
    assert settings.auth_token is not None, "the token comes from the gateway-auth Secret"
    assert settings.tracking_uri is not None
    assert settings.ensemble is not None
    assert settings.backends, "the gateway needs its TF Serving backends"


def test_compose_gateway_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = load_compose()["services"]["gateway"]["environment"]
    settings = settings_from({k: expand_defaults(str(v)) for k, v in environment.items()}, monkeypatch)
    assert settings.tracking_uri is not None
    assert settings.backends


# --- ports and addresses -----------------------------------------------------------------------------
DEFAULTS = GatewaySettings.model_fields


def default_port(field: str) -> int:
    value = DEFAULTS[field].default
    assert isinstance(value, int)
    return value


def route_paths() -> set[str]:
    source = (ROOT / "serving" / "app.py").read_text()
    return set(re.findall(r"@app\.get\(\"([^\"]+)\"\)", source))


def test_dockerfile_exposes_the_gateway_ports_and_runs_serve() -> None:
    exposed = {
        int(port.split("/")[0])
        for i in dockerfile_instructions()
        if i.stage == "gateway" and i.keyword == "EXPOSE"
        for port in i.value.split()
    }
    assert exposed == {default_port("grpc_port"), default_port("rest_port")}
    entry = gateway_entrypoint()
    assert entry[0] == "ensemble"
    parse_cli(ensemble_app(), entry[1:], "Dockerfile ENTRYPOINT")


def test_dockerfile_healthcheck_probes_the_default_rest_port() -> None:
    from deploy.docker import healthcheck

    assert default_port("rest_port") == healthcheck.DEFAULT_REST_PORT
    assert "/healthz" in route_paths()
    checks = [i for i in dockerfile_instructions() if i.stage == "gateway" and i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    copied = [
        i.value.split()[-1] for i in dockerfile_instructions() if i.stage == "gateway" and i.keyword == "COPY"
    ]
    script = checks[0].value.split("CMD", 1)[1].strip()
    argv = exec_form(script)
    assert argv is not None, "HEALTHCHECK CMD must be exec form"
    assert argv[1] in copied, "the health check script is copied into the image"


def test_dockerfile_user_is_the_uid_the_manifests_run_as() -> None:
    users = {i.value for i in dockerfile_instructions() if i.keyword == "USER"}
    assert users == {"10001:10001"}
    for path in (K8S / "base").rglob("*.yaml"):
        for uid in re.findall(r"runAsUser: (\d+)", path.read_text()):
            assert uid == "10001", path


def test_dockerfile_extras_exist() -> None:
    from deploy.docker.requirements import requirements

    runs = [i.value for i in dockerfile_instructions() if i.keyword == "RUN" and "requirements.py" in i.value]
    assert len(runs) == 2
    for run in runs:
        words = run.split(">")[0].split()
        extras = [w for w in words[words.index("pyproject.toml") + 1 :] if not w.startswith("-")]
        assert requirements(ROOT / "pyproject.toml", extras), run
    assert "serving" in runs[0]
    assert "tensorflow" not in " ".join(requirements(ROOT / "pyproject.toml", ["serving"]))


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_k8s_ports_probes_and_backend_addresses_agree(overlay: str) -> None:
    objects = render(overlay)
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    gateway = container(deployments["gateway"], "gateway")
    env = k8s_env(objects, gateway)
    rest = int(env.get("ENSEMBLE_REST_PORT") or default_port("rest_port"))
    grpc = int(env.get("ENSEMBLE_GRPC_PORT") or default_port("grpc_port"))
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": rest, "grpc": grpc}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["port"] == "http"
        assert gateway[probe]["httpGet"]["path"] in route_paths()
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["targetPort"] for p in services["gateway"]["spec"]["ports"]} == {"http", "grpc"}

    tf_serving = container(deployments["tf-serving"], "tf-serving")
    tf_flags = flags(tf_serving["args"])
    tf_ports = {p["name"]: p["containerPort"] for p in tf_serving["ports"]}
    assert tf_ports == {"grpc": int(tf_flags["port"]), "http": int(tf_flags["rest_api_port"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert tf_serving[probe]["grpc"]["port"] == int(tf_flags["port"])
    assert tf_flags["enable_grpc_healthcheck_service"] == "true", (
        "the gRPC probes need TF Serving's health service"
    )

    for address in GatewaySettings(backends=env["ENSEMBLE_BACKENDS"]).backends:
        assert backend_deployment(objects, address) is deployments["tf-serving"], address
    placed = GatewaySettings(
        aliases=env["ENSEMBLE_ALIASES"], alias_backends=json.loads(env.get("ENSEMBLE_ALIAS_BACKENDS") or "{}")
    ).alias_backends
    for alias, addresses in placed.items():
        for address in addresses:
            backend = backend_deployment(objects, address)
            assert backend is not deployments["tf-serving"], f"{alias} placed on the champion's backends"

    mlflow = container(deployments["mlflow"], "mlflow")
    mlflow_port = {p["name"]: p["containerPort"] for p in mlflow["ports"]}["http"]
    for uri in (env["ENSEMBLE_TRACKING_URI"], env["MLFLOW_TRACKING_URI"]):
        parsed = urlparse(str(uri))
        assert parsed.hostname in services
        assert {p["port"] for p in services[str(parsed.hostname)]["spec"]["ports"]} == {parsed.port}
        assert parsed.port == mlflow_port


def test_compose_ports_and_addresses_agree() -> None:
    services = load_compose()["services"]
    environment = {k: expand_defaults(str(v)) for k, v in services["gateway"]["environment"].items()}
    rest, grpc = int(environment["ENSEMBLE_REST_PORT"]), int(environment["ENSEMBLE_GRPC_PORT"])
    published = {int(str(p).split(":")[-1]) for p in services["gateway"]["ports"]}
    assert published == {rest, grpc}
    tf_flags = flags(compose_command_line(services["tf-serving"])[1:])
    for address in GatewaySettings(backends=environment["ENSEMBLE_BACKENDS"]).backends:
        host, port = address.rsplit(":", 1)
        assert host in services
        assert int(port) == int(tf_flags["port"])
    mlflow_port = next(
        int(a.split("=", 1)[1]) for a in compose_command_line(services["mlflow"]) if a.startswith("--port=")
    )
    for uri in (environment["ENSEMBLE_TRACKING_URI"], services["sync"]["environment"]["MLFLOW_TRACKING_URI"]):
        parsed = urlparse(uri)
        assert parsed.hostname == "mlflow"
        assert parsed.port == mlflow_port
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yaml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "gateway")
    assert job["metrics_path"] in route_paths()
    assert job["static_configs"][0]["targets"] == [f"gateway:{rest}"]


@needs_kubectl
def test_servicemonitor_scrapes_the_gateway_metrics_port() -> None:
    objects = render("overlays/prod")
    monitor = by_kind(objects, "ServiceMonitor")["gateway"]
    service = by_kind(objects, "Service")["gateway"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] in route_paths()


# --- TF Serving and the sync ---------------------------------------------------------------------------
def check_tf_serving_command(argv: list[str], image: str, sync_argv: list[str], where: str) -> None:
    assert argv[0] == "/usr/bin/tensorflow_model_server", where
    tf_flags = flags(argv[1:])
    unknown = set(tf_flags) - TF_SERVING_FLAGS
    assert not unknown, f"{where}: not TF Serving {TF_SERVING_VERSION} flags: {unknown}"
    assert image.split(":")[1].removesuffix("-gpu") == TF_SERVING_VERSION, (
        f"{where}: {image} is not the TF Serving release whose flags this test knows; re-check them"
    )
    assert int(tf_flags["model_config_file_poll_wait_seconds"]) > 0, "promotion must reach TF Serving"
    assert tf_flags["allow_version_labels_for_unavailable_models"] == "true", (
        "the sync runs without --staged-labels, so labels may name versions still loading"
    )
    assert "--staged-labels" not in sync_argv
    name, params = parse_cli(ensemble_app(), sync_argv, where)
    assert name == "sync"
    repo = str(params["base_path"] or params["model_repo"])
    assert tf_flags["model_config_file"] == f"{repo}/{registry_sync.CONFIG_FILE}"


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_k8s_tf_serving_reads_what_the_sync_writes(overlay: str) -> None:
    objects = render(overlay)
    deployment = by_kind(objects, "Deployment")["tf-serving"]
    tf_serving = container(deployment, "tf-serving")
    mounts = {m["name"]: m["mountPath"] for m in tf_serving["volumeMounts"]}
    for name in ("sync", "sync-once"):
        sync = container(deployment, name)
        argv = [substitute(a, k8s_env(objects, sync)) for a in command_line(sync)[1:]]
        check_tf_serving_command(command_line(tf_serving), tf_serving["image"], argv, f"{overlay} {name}")
        sync_mounts = {m["name"]: m["mountPath"] for m in sync["volumeMounts"]}
        _, params = parse_cli(ensemble_app(), argv, name)
        assert sync_mounts["models"] == mounts["models"] == str(params["model_repo"])
        assert params["watch"] is (name == "sync")


def test_compose_tf_serving_reads_what_the_sync_writes() -> None:
    services = load_compose()["services"]
    tf_serving, sync = services["tf-serving"], services["sync"]
    argv = compose_command_line(sync)
    assert argv[0] == "ensemble"
    check_tf_serving_command(
        compose_command_line(tf_serving), expand_defaults(tf_serving["image"]), argv[1:], "compose"
    )
    _, params = parse_cli(ensemble_app(), argv[1:], "compose sync")
    assert params["watch"] is True
    assert f"models:{params['model_repo']}" in sync["volumes"]


ASSUMED_LOAD_S = 30.0
"""Model load time the shipped grace must leave room for, on top of the chain of polls."""


def check_grace_and_backend(
    sync_params: dict[str, Any],
    tf_flags: dict[str, str],
    gateway: GatewaySettings,
    backend_host: str,
    where: str,
) -> None:
    """The sync keeps an old version through the whole chain of polls, and asks its own TF Serving."""
    minimum = registry_sync.minimum_grace_s(
        sync_interval_s=sync_params["interval"],
        backend_config_poll_s=float(tf_flags["model_config_file_poll_wait_seconds"]),
        load_s=ASSUMED_LOAD_S,
        gateway_poll_s=gateway.poll_interval_s,
        request_deadline_s=gateway.request_deadline_s,
    )
    assert sync_params["grace"] >= minimum, (
        f"{where}: --grace {sync_params['grace']} < {minimum} (docs/registry.md)"
    )
    assert sync_params["backend"] == f"{backend_host}:{tf_flags['port']}", (
        f"{where}: --backend is not its TF Serving"
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_k8s_sync_grace_covers_the_chain_of_polls(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    deployments = by_kind(objects, "Deployment")
    gateway = settings_from(k8s_env(objects, container(deployments["gateway"], "gateway")), monkeypatch)
    sync = container(deployments["tf-serving"], "sync")
    _, params = parse_cli(
        ensemble_app(), [substitute(a, k8s_env(objects, sync)) for a in command_line(sync)[1:]], "sync"
    )
    tf_flags = flags(container(deployments["tf-serving"], "tf-serving")["args"])
    # The sidecar shares the pod's network: its TF Serving is on localhost.
    check_grace_and_backend(params, tf_flags, gateway, "localhost", overlay)


@pytest.mark.parametrize("challenger_backend", [None, "tf-serving-challenger:8500"])
def test_compose_each_alias_reaches_a_server_whose_sync_follows_it(
    challenger_backend: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the challenger profile both aliases go to tf-serving; with it and
    CHALLENGER_BACKEND (docs/deploy.md), the challenger goes to tf-serving-challenger, whose sync
    follows it alone, with --unset-ok, and asks that server."""
    services = load_compose()["services"]

    def expand(value: object) -> str:
        text = str(value)
        if challenger_backend is not None:
            text = text.replace("${CHALLENGER_BACKEND:-tf-serving:8500}", challenger_backend)
        return expand_defaults(text)

    environment = {k: expand(v) for k, v in services["gateway"]["environment"].items()}
    gateway = settings_from(environment, monkeypatch)  # type: ignore[arg-type]
    writers = {
        volume.split(":")[0]: name
        for name, service in services.items()
        if name.startswith("sync")
        for volume in service["volumes"]
    }
    for alias in gateway.aliases:
        (address,) = gateway.addresses_for("any-member", alias)
        host, port = address.rsplit(":", 1)
        server = services[host]
        assert flags(compose_command_line(server)[1:])["port"] == port, address
        writer = writers[server["volumes"][0].split(":")[0]]
        _, params = parse_cli(ensemble_app(), compose_command_line(services[writer])[1:], writer)
        assert alias in params["alias"], f"{alias} is sent to {host}, whose sync {writer} does not follow it"
        assert params["backend"] == f"{host}:{port}", f"{writer} must ask the server it feeds"
        if params["alias"][0] != gateway.aliases[0]:
            assert params["unset_ok"], (
                f"{writer}: --unset-ok, or it fails while {params['alias'][0]} is unset"
            )
    expected_host = (challenger_backend or "tf-serving:8500").rsplit(":", 1)[0]
    assert gateway.addresses_for("any-member", "challenger")[0].startswith(expected_host)


def test_compose_sync_grace_covers_the_chain_of_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    environment = {k: expand_defaults(str(v)) for k, v in services["gateway"]["environment"].items()}
    gateway = settings_from(environment, monkeypatch)  # type: ignore[arg-type]
    _, params = parse_cli(ensemble_app(), compose_command_line(services["sync"])[1:], "compose sync")
    tf_flags = flags(compose_command_line(services["tf-serving"])[1:])
    check_grace_and_backend(params, tf_flags, gateway, "tf-serving", "compose")


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_k8s_last_good_manifest_is_on_an_empty_dir(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    deployment = by_kind(objects, "Deployment")["gateway"]
    gateway = container(deployment, "gateway")
    settings = settings_from(k8s_env(objects, gateway), monkeypatch)
    assert settings.last_good_manifest is not None
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volume = mounts.get(str(settings.last_good_manifest.parent))
    assert volume is not None, (
        "the last-known-good manifest must be on a volume (the root filesystem is read-only)"
    )
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[volume], "an emptyDir outlives the container's restarts"


def test_compose_last_good_manifest_is_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = load_compose()["services"]["gateway"]
    settings = settings_from(
        {k: expand_defaults(str(v)) for k, v in gateway["environment"].items()}, monkeypatch
    )
    assert settings.last_good_manifest is not None
    targets = {volume.split(":")[1] for volume in gateway["volumes"]}
    assert str(settings.last_good_manifest.parent) in targets


@needs_kubectl
def test_k8s_sync_metrics_are_scraped() -> None:
    objects = render("overlays/prod")
    sync = container(by_kind(objects, "Deployment")["tf-serving"], "sync")
    _, params = parse_cli(
        ensemble_app(), [substitute(a, k8s_env(objects, sync)) for a in command_line(sync)[1:]], "sync"
    )
    ports = {p["name"]: p["containerPort"] for p in sync["ports"]}
    assert ports == {"sync-metrics": params["metrics_port"]}
    service = by_kind(objects, "Service")["tf-serving"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}["sync-metrics"] == "sync-metrics"
    monitor = by_kind(objects, "ServiceMonitor")["tf-serving-sync"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["sync-metrics"]
    policy = by_kind(objects, "NetworkPolicy")["tf-serving"]
    open_ports = [
        p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]
    ]
    assert open_ports == [params["metrics_port"]], "only the metrics port is open to every scraper"


def test_compose_sync_metrics_are_scraped() -> None:
    services = load_compose()["services"]
    _, params = parse_cli(ensemble_app(), compose_command_line(services["sync"])[1:], "compose sync")
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yaml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "sync")
    assert job["static_configs"][0]["targets"] == [f"sync:{params['metrics_port']}"]
    assert set(services["sync"]["networks"]) & set(services["prometheus"]["networks"])


def backend_deployment(objects: list[dict[str, Any]], address: str) -> dict[str, Any]:
    """The TF Serving Deployment behind a gateway backend address: its Service's selection, on the
    Service port that reaches TF Serving's gRPC port."""
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    host, port = address.rsplit(":", 1)
    assert host in services, f"{address}: no Service {host}"
    service = services[host]
    chosen = [
        d for d in deployments.values() if d["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ]
    assert len(chosen) == 1, f"{address}: the Service selects {len(chosen)} Deployments"
    tf_serving = container(chosen[0], "tf-serving")
    tf_ports = {p["name"]: p["containerPort"] for p in tf_serving["ports"]}
    target = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}[int(port)]
    assert tf_ports[target] == int(flags(tf_serving["args"])["port"]), (
        f"{address} must reach TF Serving's gRPC port"
    )
    return chosen[0]


def sync_params(
    objects: list[dict[str, Any]], deployment: dict[str, Any], name: str = "sync"
) -> dict[str, Any]:
    sync = container(deployment, name)
    argv = [substitute(a, k8s_env(objects, sync)) for a in command_line(sync)[1:]]
    return parse_cli(ensemble_app(), argv, f"{deployment['metadata']['name']} {name}")[1]


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_sync_serves_the_aliases_the_gateway_serves(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend's sync follows exactly the aliases whose members the gateway sends there."""
    objects = render(overlay)
    gateway_container = container(by_kind(objects, "Deployment")["gateway"], "gateway")
    env = k8s_env(objects, gateway_container)
    gateway = settings_from(env, monkeypatch)
    sent: dict[str, set[str]] = {}
    for alias in gateway.aliases:
        for address in gateway.addresses_for("any-member", alias):
            sent.setdefault(backend_deployment(objects, address)["metadata"]["name"], set()).add(alias)
    backends = [
        d
        for d in by_kind(objects, "Deployment").values()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "backend"
    ]
    assert {d["metadata"]["name"] for d in backends} == set(sent), "a backend the gateway never calls"
    for deployment in backends:
        where = f"{overlay} {deployment['metadata']['name']}"
        for name in ("sync", "sync-once"):
            params = sync_params(objects, deployment, name)
            assert params["name"] == env["ENSEMBLE_ENSEMBLE"], where
            assert set(params["alias"]) == sent[deployment["metadata"]["name"]], where
            # A sync whose first alias is not the gateway's default may find it unset (a challenger
            # on a fresh install): it must start with no model rather than fail.
            if params["alias"][0] != gateway.aliases[0]:
                assert params["unset_ok"], (
                    f"{where} {name}: --unset-ok, or it fails while {params['alias'][0]} is unset"
                )


@needs_kubectl
@pytest.mark.parametrize("overlay", WITH_CHALLENGER_BACKENDS)
def test_challenger_backends_mirror_the_champions(overlay: str) -> None:
    """The challenger's backends are the champion's, built again: only names, labels and the
    aliases their sync follows differ, so a change to base/tf-serving reaches both."""
    deployments = by_kind(render(overlay), "Deployment")
    champion, challenger = deployments["tf-serving"], deployments["tf-serving-challenger"]
    assert container(challenger, "tf-serving") == container(champion, "tf-serving")
    assert (
        challenger["spec"]["template"]["spec"]["volumes"] == champion["spec"]["template"]["spec"]["volumes"]
    )
    for name in ("sync", "sync-once"):
        mine, theirs = container(challenger, name), container(champion, name)
        assert {k: v for k, v in mine.items() if k != "args"} == {
            k: v for k, v in theirs.items() if k != "args"
        }
    policies = by_kind(render(overlay), "NetworkPolicy")
    assert policies["tf-serving-challenger"]["spec"]["ingress"] == policies["tf-serving"]["spec"]["ingress"]
    assert policies["tf-serving-challenger"]["spec"]["podSelector"] == challenger["spec"]["selector"]


# --- every command line parses ------------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS + TRAINING_OVERLAYS)
def test_every_k8s_ensemble_command_parses(overlay: str) -> None:
    found = ensemble_containers(render(overlay))
    assert found
    for where, _, argv in found:
        parse_cli(ensemble_app(), argv, f"{overlay} {where}")


def test_every_compose_ensemble_command_parses() -> None:
    services = load_compose()["services"]
    for name in ("sync", "trainer", "gateway"):
        argv = compose_command_line(services[name]) or gateway_entrypoint()
        if argv[0] == "ensemble" and len(argv) > 1 and argv[1] != "--help":
            parse_cli(ensemble_app(), argv[1:], f"compose {name}")


def mlflow_server_command() -> click.Command:
    from mlflow.cli import cli

    assert isinstance(cli, click.Group)
    return cli.commands["server"]


@needs_kubectl
def test_mlflow_server_command_parses_k8s() -> None:
    objects = render("overlays/prod")
    mlflow = container(by_kind(objects, "Deployment")["mlflow"], "mlflow")
    line = command_line(mlflow)
    assert line[:2] == ["mlflow", "server"]
    args = [
        substitute(a, {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://u:p@db/mlflow"}) for a in line[2:]
    ]
    params = parse_command(mlflow_server_command(), "server", args, "k8s mlflow")
    assert params["serve_artifacts"] is True
    mounts = {m["mountPath"] for m in mlflow["volumeMounts"]}
    assert params["artifacts_destination"] in mounts


def test_mlflow_server_command_parses_compose() -> None:
    line = compose_command_line(load_compose()["services"]["mlflow"])
    assert line[:2] == ["mlflow", "server"]
    params = parse_command(mlflow_server_command(), "server", line[2:], "compose mlflow")
    assert params["serve_artifacts"] is True


# --- drain --------------------------------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(overlay: str) -> None:
    objects = render(overlay)
    deployment = by_kind(objects, "Deployment")["gateway"]
    gateway = container(deployment, "gateway")
    env = k8s_env(objects, gateway)
    drain = float(env.get("ENSEMBLE_DRAIN_TIMEOUT_S") or DEFAULTS["drain_timeout_s"].default)
    pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(pre_stop[1]) + drain, f"grace {grace}s < preStop {pre_stop[1]}s + drain {drain}s"


def test_compose_stop_grace_covers_the_drain() -> None:
    gateway = load_compose()["services"]["gateway"]
    drain = float(expand_defaults(str(gateway["environment"]["ENSEMBLE_DRAIN_TIMEOUT_S"])))
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > drain


# --- training --------------------------------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("overlay", TRAINING_OVERLAYS)
def test_training_jobs_match_the_training_config(overlay: str) -> None:
    from training.config import ensemble_name, load_config

    objects = render(overlay)
    config_map = by_kind(objects, "ConfigMap")
    config_text = next(
        cm["data"]["training.yaml"] for name, cm in config_map.items() if name.startswith("training-config")
    )
    config_file = Path(__import__("tempfile").mkdtemp()) / "training.yaml"
    config_file.write_text(config_text)
    config = load_config(config_file)
    jobs = by_kind(objects, "Job")
    members = jobs["train-members"]
    assert members["spec"]["completionMode"] == "Indexed"
    assert members["spec"]["completions"] == config.candidate_count
    member = container(members, "train-member")
    env = k8s_env(objects, member)
    assert int(str(env["MEMBERS"])) == config.candidate_count
    _, params = parse_cli(
        ensemble_app(), [substitute(a, env) for a in command_line(member)[1:]], "train-member"
    )
    config_mount = {m["name"]: m["mountPath"] for m in member["volumeMounts"]}["config"]
    assert str(params["config"]) == f"{config_mount}/training.yaml"
    assemble = container(jobs["assemble"], "assemble")
    _, assemble_params = parse_cli(
        ensemble_app(),
        [substitute(a, k8s_env(objects, assemble)) for a in command_line(assemble)[1:]],
        "assemble",
    )
    assert assemble_params["out"] == params["out"], "assemble reads the members' run folder"
    assert assemble_params["register"] is True
    serving = render(overlay.removesuffix("/training"))
    gateway = container(by_kind(serving, "Deployment")["gateway"], "gateway")
    assert k8s_env(serving, gateway)["ENSEMBLE_ENSEMBLE"] == ensemble_name(config), "serve what is trained"
    assert (
        k8s_env(objects, assemble)["MLFLOW_TRACKING_URI"] == k8s_env(serving, gateway)["MLFLOW_TRACKING_URI"]
    )


# --- metrics -------------------------------------------------------------------------------------------
def traffic_metric_labels() -> dict[str, set[str]]:
    """Every champion vs challenger series, read from a real scrape with each one filled in.

    The window's gauges are computed at scrape time, so they are not attributes to list: one
    compared request (both output kinds, a member on each side) makes every family appear.
    """
    registry = CollectorRegistry()
    window = ComparisonWindow("digits", "champion", "challenger", max_requests=10, max_age_s=60.0)
    metrics = TrafficMetrics(registry, lambda: [window])
    kinds: dict[str, OutputKind] = {"probabilities": "probabilities", "price": "predictions"}
    outputs = {"probabilities": np.array([[0.6, 0.4]]), "price": np.array([[2.0]])}
    member = [MemberObservation("digits-m0", 1, 0.01, outputs)]
    recorded = window.record(
        SideObservation(1, 0.01, outputs, kinds, members=member),
        SideObservation(2, 0.02, outputs, kinds, members=member),
    )
    metrics.count_route(window, "champion")
    metrics.count_shadow(window, "answered")
    metrics.count_compared(window, recorded)
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def metric_labels() -> dict[str, set[str]]:
    """Every series name the gateway and the sync sidecar export, with its label names."""
    from registry.sync_metrics import SyncMetrics

    series = traffic_metric_labels()
    for value in [*vars(GatewayMetrics()).values(), *vars(SyncMetrics()).values()]:
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        name, labels = value._name, set(value._labelnames)
        if isinstance(value, Counter):
            series[f"{name}_total"] = labels
        elif isinstance(value, Histogram):
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def promql_expressions() -> dict[str, str]:
    """Every PromQL expression of alerts (k8s and compose), dashboard and the HPA metric option."""
    exprs: dict[str, str] = {}
    for doc in yaml.safe_load_all((K8S / "components" / "monitoring" / "monitoring.yaml").read_text()):
        for group in doc.get("spec", {}).get("groups", []):
            for rule in group["rules"]:
                exprs[f"PrometheusRule {rule['alert']}"] = rule["expr"]
    for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            exprs[f"alerts.yaml {rule['alert']}"] = rule["expr"]
    dashboard = json.loads(
        (K8S / "components" / "monitoring" / "dashboards" / "ensemble-gateway.json").read_text()
    )
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"dashboard {panel['title']} {target['refId']}"] = target["expr"]
    hpa = (K8S / "components" / "hpa-in-flight" / "kustomization.yaml").read_text()
    for name in re.findall(r"name: (ensemble_\w+)", hpa):
        exprs["hpa-in-flight"] = name
    return exprs


def test_alerts_and_dashboard_use_only_defined_metrics_and_labels() -> None:
    series = metric_labels()
    assert "ensemble_requests_total" in series
    assert {"ensemble_comparison_member_latency_seconds", "ensemble_comparison_mean_rel_diff"} <= set(
        series
    ), "the scrape filled every champion vs challenger family"
    exprs = promql_expressions()
    assert any(key.startswith("dashboard") for key in exprs)
    for where, expr in exprs.items():
        names = re.findall(r"\b(ensemble_[a-z0-9_]+)\b", expr)
        assert names, f"{where} uses no gateway metric"
        for name in names:
            assert name in series, (
                f"{where}: {name} is not exported (serving/metrics.py, registry/sync_metrics.py)"
            )
        for name, matchers in re.findall(r"\b(ensemble_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in series[name], f"{where}: {name} has no label {label!r}"
        used = set(names)
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert any(label in series[name] for name in used), f"{where}: no metric has label {label!r}"


def test_backend_alert_uses_the_failure_reason_the_gateway_records() -> None:
    import grpc

    from serving.backends import _reason

    expr = next(e for k, e in promql_expressions().items() if k == "PrometheusRule EnsembleBackendNotReady")
    reasons = set(re.findall(r'reason="([a-z_]+)"', expr))
    assert reasons == {_reason(grpc.StatusCode.UNAVAILABLE)}


def test_compose_alerts_equal_the_prometheus_rule() -> None:
    docs = list(yaml.safe_load_all((K8S / "components" / "monitoring" / "monitoring.yaml").read_text()))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    compose_rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert compose_rules["groups"] == rule["spec"]["groups"]


# --- the champion vs challenger alert, evaluated by Prometheus's own rule engine ------------------------
AGREEMENT_ALERT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # digits: 100 decisions a minute, 98% agreeing, then from minute 90 only 60%.
      - series: 'ensemble_comparison_decisions_total{{{pair},output="probabilities"}}'
        values: '0+100x150'
      - series: 'ensemble_comparison_agreeing_decisions_total{{{pair},output="probabilities"}}'
        values: '0+98x90 8880+60x60'
      # iris: steady at 98% all along.
      - series: 'ensemble_comparison_decisions_total{{{iris},output="probabilities"}}'
        values: '0+100x150'
      - series: 'ensemble_comparison_agreeing_decisions_total{{{iris},output="probabilities"}}'
        values: '0+98x150'
      # penguins: the same drop, but 5 decisions a minute: too few to alert on.
      - series: 'ensemble_comparison_decisions_total{{{penguins},output="probabilities"}}'
        values: '0+5x150'
      - series: 'ensemble_comparison_agreeing_decisions_total{{{penguins},output="probabilities"}}'
        values: '0+4.9x90 444+3x60'
    alert_rule_test:
      - eval_time: 85m
        alertname: EnsembleChallengerAgreementDrop
        exp_alerts: []
      - eval_time: 120m
        alertname: EnsembleChallengerAgreementDrop
        exp_alerts:
          - exp_labels: {{ensemble: digits, champion: champion, challenger: challenger, severity: warning}}
            exp_annotations:
              summary: "digits: the challenger agrees far less with the champion than an hour before."
              description: "{description}"
"""


def test_agreement_alert_fires_on_a_sudden_drop_only(tmp_path: Path) -> None:
    """promtool runs the shipped rule on series where agreement drops, stays, or drops on thin traffic."""
    promtool = find_tool("promtool")
    if promtool is None:
        pytest.skip(f"promtool not found: {INSTALL_HINT['promtool']}")
    rules = ROOT / "deploy" / "prometheus" / "alerts.yaml"
    rule = next(
        r
        for group in yaml.safe_load(rules.read_text())["groups"]
        for r in group["rules"]
        if r["alert"] == "EnsembleChallengerAgreementDrop"
    )
    # The description as Prometheus renders it: 60% agreement over the last 10 minutes.
    description = (
        rule["annotations"]["description"]
        .replace("{{ $labels.challenger }}", "challenger")
        .replace("{{ $labels.champion }}", "champion")
        .replace("{{ $labels.ensemble }}", "digits")
        .replace("{{ $value | humanizePercentage }}", "60%")
    )
    test_file = tmp_path / "agreement_alert_test.yaml"
    test_file.write_text(
        AGREEMENT_ALERT_TEST.format(
            rules=json.dumps(str(rules)),
            pair='ensemble="digits",champion="champion",challenger="challenger"',
            iris='ensemble="iris",champion="champion",challenger="challenger"',
            penguins='ensemble="penguins",champion="champion",challenger="challenger"',
            description=description.replace('"', '\\"'),
        )
    )
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
