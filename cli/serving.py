"""The serving commands (``serve``, ``backend``), registered on the ``ensemble`` app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``; heavy imports stay inside each command."""
    app.command("serve")(serve)
    app.command("backend")(backend)


def serve(
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Serve this ensemble.json (reloaded when it changes).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="MLflow tracking URI to resolve aliases from.")
    ] = None,
    ensemble: Annotated[
        str | None, typer.Option("--ensemble", help="Registered ensemble name (with --tracking-uri).")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(
            "--alias",
            metavar="NAME",
            help="Registry alias to serve; repeat for several (first is the default).",
        ),
    ] = None,
    last_good_manifest: Annotated[
        Path | None,
        typer.Option(
            "--last-good-manifest",
            help="Keep the last manifests served from the registry in this file; serve them when the "
            "registry is unreachable at start.",
        ),
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            metavar="HOST:PORT",
            help="TF Serving gRPC HOST:PORT hosting all members; repeat for replicas.",
        ),
    ] = None,
    member_backend: Annotated[
        list[str] | None,
        typer.Option(
            "--member-backend",
            metavar="MEMBER=HOST:PORT",
            help="MEMBER=HOST:PORT[,HOST:PORT] override for one member.",
        ),
    ] = None,
    alias_backend: Annotated[
        list[str] | None,
        typer.Option(
            "--alias-backend",
            metavar="ALIAS=HOST:PORT",
            help="ALIAS=HOST:PORT[,HOST:PORT]: the backends of the members served under ALIAS.",
        ),
    ] = None,
    rest_port: Annotated[int | None, typer.Option("--rest-port", help="REST port (default 8501).")] = None,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="gRPC port (default 8500).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Interface for both REST and gRPC.")] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Coalesce concurrent requests.")
    ] = None,
    hedge_after_ms: Annotated[
        float | None, typer.Option("--hedge-after-ms", help="Hedge a slow member call after this delay.")
    ] = None,
    traffic: Annotated[
        list[str] | None,
        typer.Option(
            "--traffic",
            metavar="NAME:KEY=VALUE",
            help="NAME:KEY=VALUE[,KEY=VALUE] traffic policy of an ensemble, e.g. "
            "digits:shadow_fraction=0.1,canary_percent=20 (see docs/gateway.md).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of gateway settings (flags and env win).")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug, info, warning, error.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Gateway processes sharing the ports (SO_REUSEPORT), one per core to use (default 1).",
        ),
    ] = None,
) -> None:
    """Run the ensemble gateway: TF Serving's REST and gRPC API in front of the members."""
    from pydantic import ValidationError

    from serving.settings import GatewaySettings

    overrides: dict[str, object] = {
        "manifest": manifest,
        "tracking_uri": tracking_uri,
        "ensemble": ensemble,
        "aliases": alias or None,
        "last_good_manifest": last_good_manifest,
        "backends": backend or None,
        "rest_port": rest_port,
        "grpc_port": grpc_port,
        "rest_host": host,
        "grpc_host": host,
        "batching": batching,
        "hedge_after_s": hedge_after_ms / 1000 if hedge_after_ms is not None else None,
        "log_level": log_level,
        "workers": workers,
    }
    if manifest is not None and not manifest.is_file():
        # Checked before the other usage errors: a wrong path is the likelier mistake to fix first.
        typer.echo(f"error: manifest {manifest} not found", err=True)
        raise typer.Exit(2)
    if config is not None and config.is_file():
        _check_config_yaml(config)
    try:
        overrides.update(_placements(member_backend, alias_backend))
        if traffic:
            from serving.traffic.policy import parse_traffic_option

            overrides["traffic"] = parse_traffic_option(traffic)
        settings = GatewaySettings.load(config, **overrides)
    except ValidationError as exc:
        from contracts.errors import validation_summary

        typer.echo(f"error: {validation_summary(exc)}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.manifest is None and settings.tracking_uri is None:
        typer.echo("error: give --manifest FILE or --tracking-uri URI --ensemble NAME", err=True)
        raise typer.Exit(2)
    if not settings.has_backends:
        typer.echo("error: give --backend HOST:PORT (or --member-backend, --alias-backend)", err=True)
        raise typer.Exit(2)

    from serving.app import run
    from serving.lifecycle import StartupError
    from serving.manifest_source import ManifestLoadError

    try:
        run(settings)
    except (ManifestLoadError, StartupError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _check_config_yaml(config: Path) -> None:
    """Exit 2 with one line when the gateway's config file is not a YAML mapping (pydantic-settings
    would otherwise surface a parser traceback or a cryptic dict-update error)."""
    import yaml

    try:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as exc:
        typer.echo(f"error: cannot read config {config}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        typer.echo(f"error: config {config} is not valid YAML{where}", err=True)
        raise typer.Exit(2) from None
    if loaded is not None and not isinstance(loaded, dict):
        typer.echo(f"error: config {config} must be a YAML mapping at the top level", err=True)
        raise typer.Exit(2)


def _placements(member_backend: list[str] | None, alias_backend: list[str] | None) -> dict[str, object]:
    """The settings ``--member-backend`` and ``--alias-backend`` give, if any."""
    placed: dict[str, object] = {}
    if member_backend:
        placed["member_backends"] = _placed_backends("--member-backend", "MEMBER", member_backend)
    if alias_backend:
        placed["alias_backends"] = _placed_backends("--alias-backend", "ALIAS", alias_backend)
    return placed


def _placed_backends(flag: str, what: str, values: list[str]) -> dict[str, list[str]]:
    """``KEY=HOST:PORT[,HOST:PORT]`` values of a repeatable flag, as KEY -> addresses."""
    placed: dict[str, list[str]] = {}
    for value in values:
        key, sep, addresses = value.partition("=")
        if not sep or not key or not addresses:
            raise ValueError(f"{flag} {value!r} must be {what}=HOST:PORT[,HOST:PORT]")
        placed.setdefault(key, []).extend(a.strip() for a in addresses.split(",") if a.strip())
    return placed


def backend(
    port: Annotated[int, typer.Option("--port", help="gRPC port.")] = 8500,
    rest_api_port: Annotated[
        int,
        typer.Option("--rest_api_port", help="REST port; 0 (the default, as in TF Serving) turns REST off."),
    ] = 0,
    rest_api_timeout_in_ms: Annotated[
        int, typer.Option("--rest_api_timeout_in_ms", help="Upper bound on a REST predict; 0 for none.")
    ] = 30000,
    model_config_file: Annotated[
        Path | None, typer.Option("--model_config_file", help="models.config in TF Serving's text format.")
    ] = None,
    model_config_file_poll_wait_seconds: Annotated[
        int,
        typer.Option(
            "--model_config_file_poll_wait_seconds", help="Re-read the config this often; 0 = once."
        ),
    ] = 0,
    model_name: Annotated[
        str, typer.Option("--model_name", help="Single-model mode: the name (with --model_base_path).")
    ] = "default",
    model_base_path: Annotated[
        Path | None, typer.Option("--model_base_path", help="Single-model mode: folder of version folders.")
    ] = None,
    file_system_poll_wait_seconds: Annotated[
        int,
        typer.Option("--file_system_poll_wait_seconds", help="Look for new versions this often; 0 = once."),
    ] = 1,
    max_num_load_retries: Annotated[
        int,
        typer.Option(
            "--max_num_load_retries", help="Retries of a failed load after the first try; 0 = none."
        ),
    ] = 5,
    load_retry_interval_micros: Annotated[
        int,
        typer.Option("--load_retry_interval_micros", help="Wait between load retries (µs); negative = none."),
    ] = 60_000_000,
    enable_grpc_healthcheck_service: Annotated[
        str,
        typer.Option(
            "--enable_grpc_healthcheck_service",
            help="Accepted for TF Serving compatibility; health is always on.",
        ),
    ] = "true",
    fault_config: Annotated[
        Path | None,
        typer.Option("--fault_config", help="Testing aid: YAML/JSON of added latency and errors per model."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (TF Serving binds all).")] = "0.0.0.0",
) -> None:
    """Local model server: a stand-in for tensorflow_model_server with TF Serving's flags and API."""
    from pydantic import ValidationError

    from serving.local_server.settings import missing_paths, settings_from_flags

    del enable_grpc_healthcheck_service  # the standard health service is always served
    try:
        settings = settings_from_flags(
            port=port,
            rest_api_port=rest_api_port,
            rest_api_timeout_in_ms=rest_api_timeout_in_ms,
            model_config_file=model_config_file,
            model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
            model_name=model_name,
            model_base_path=model_base_path,
            file_system_poll_wait_seconds=file_system_poll_wait_seconds,
            max_num_load_retries=max_num_load_retries,
            load_retry_interval_micros=load_retry_interval_micros,
            fault_config=fault_config,
            host=host,
        )
    except ValidationError as exc:
        from contracts.errors import validation_problem

        where, message = validation_problem(exc)
        typer.echo(f"error: {'--' + where + ': ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None
    problem = missing_paths(settings)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    # TensorFlow reads this when it loads: without it, CUDA-probe noise buries the server's own lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.local_server.server import run

    raise typer.Exit(run(settings))
