"""The ``sync`` command: write the member versions an ensemble's aliases need into a TF Serving repository.

One pass, or ``--watch`` passes with optional Prometheus metrics; :mod:`registry.sync` does the
work, and ``--backend`` composes serving's availability check into it. mlflow is imported inside
the command, so ``ensemble --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cli.registry import TrackingUri, connect_client, one_line_errors
from registry.defaults import DEFAULT_SYNC_GRACE_S


def sync(
    name: Annotated[str, typer.Argument(help="Ensemble (registered model) name.")],
    model_repo: Annotated[
        Path, typer.Option("--model-repo", help="TF Serving model repository to write.", file_okay=False)
    ],
    alias: Annotated[
        list[str] | None, typer.Option("--alias", help="Alias to serve as a version label; repeatable.")
    ] = None,
    base_path: Annotated[
        str | None,
        typer.Option(
            "--base-path",
            help="Repository path as TF Serving sees it (e.g. /models); default: the real path.",
        ),
    ] = None,
    staged_labels: Annotated[
        bool,
        typer.Option(
            "--staged-labels",
            help="Move a label only to a version the previous config already listed "
            "(for TF Serving without --allow_version_labels_for_unavailable_models).",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0.0,
            help="Seconds a version stays listed and on disk after no alias names it any more "
            "(make before break; see docs/registry.md for the minimum).",
        ),
    ] = DEFAULT_SYNC_GRACE_S,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="gRPC HOST:PORT of the TF Serving this repository feeds: an old version is pruned "
            "only once the versions the aliases name are AVAILABLE there.",
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep syncing every --interval seconds.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between passes.")] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="With --watch: serve Prometheus metrics of the passes on this port (/metrics).",
        ),
    ] = None,
    unset_ok: Annotated[
        bool,
        typer.Option(
            "--unset-ok",
            help="The first alias may be unset too (a repository for a challenger alone): with no "
            "alias set, models.config lists no model until one is.",
        ),
    ] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write the member versions the aliases need and models.config (labels = aliases) into a repository."""
    from registry import sync as sync_module
    from registry.sync_plan import LabelPolicy

    aliases = alias or ["champion"]
    policy: LabelPolicy = "staged" if staged_labels else "immediate"
    if metrics_port is not None and not watch:
        typer.echo("error: --metrics-port needs --watch", err=True)
        raise typer.Exit(2)
    if backend is not None:
        host, sep, port = backend.rpartition(":")
        if not sep or not host or not port.isdigit():
            typer.echo(f"error: --backend {backend!r} must be HOST:PORT", err=True)
            raise typer.Exit(2)
    with one_line_errors():
        client = connect_client(tracking_uri)
        available = None
        if backend is not None:
            # The command line composes the parts: serving asks the backend, the sync only calls it.
            from serving.availability import backend_availability

            available = backend_availability(backend)

        def once() -> sync_module.SyncResult:
            return sync_module.sync_once(
                client,
                name,
                aliases,
                model_repo,
                base_path=base_path,
                label_policy=policy,
                grace_s=grace,
                available=available,
                unset_ok=unset_ok,
            )

        if not watch:
            typer.echo(once().summary())
            return
    report: Callable[[str], None] = lambda line: typer.echo(line, err=True)  # noqa: E731
    on_pass = None
    if metrics_port is not None:
        from registry.sync_metrics import SyncMetrics

        metrics = SyncMetrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            typer.echo(f"error: cannot serve metrics on port {metrics_port}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        on_pass = metrics.record
    typer.echo(
        f"syncing {name}@{','.join(aliases)} into {model_repo} every {interval:g}s (grace {grace:g}s)",
        err=True,
    )
    try:
        sync_module.watch(once, interval_s=interval, report=report, on_pass=on_pass)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


def register(app: typer.Typer) -> None:
    """Add ``sync`` to ``app``; heavy imports stay inside the command."""
    app.command("sync")(sync)
