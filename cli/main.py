"""The ``ensemble`` command: one typer app composed of the command groups in this package.

Each group (cli/training.py, cli/registry.py, cli/sync.py, cli/serving.py, the demo) imports its heavy
dependencies (TensorFlow, mlflow, the gateway) only inside the command that needs them, so
``ensemble --help`` starts instantly. Training's commands are there only where ``training/`` is
installed: the gateway image has none.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer


def build_app() -> typer.Typer:
    from cli import registry as registry_cli
    from cli import serving as serving_cli
    from cli import sync as sync_cli

    app = typer.Typer(
        name="ensemble",
        help="Train Keras model ensembles and serve them with TF Serving's API.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    if training_installed():
        from cli import training as training_cli

        training_cli.register(app)
    registry_cli.register(app)
    sync_cli.register(app)
    serving_cli.register(app)
    if training_installed():  # the demo trains its ensemble first
        app.command("demo")(demo)
    return app


def training_installed() -> bool:
    """Whether this installation has ``training/``: the gateway image ships without it."""
    return importlib.util.find_spec("training") is not None


def demo(
    out: Annotated[Path | None, typer.Option("--out", help="Where the demo ensemble lives.")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: local sqlite store).")
    ] = None,
    members: Annotated[int, typer.Option("--members", min=2, help="Members to train.")] = 3,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs per member (early stopping).")] = 30,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train anew even if an ensemble exists.")
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="Exit after the sample predictions.")] = False,
    rest_port: Annotated[int, typer.Option("--rest-port", help="Gateway REST port.")] = 8501,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="Gateway gRPC port.")] = 8500,
) -> None:
    """Train, register, sync, serve and query an ensemble on this machine, on embedded defaults."""
    from rich.console import Console

    from cli import demo as ensemble_demo
    from cli.demo_services import DemoError, exit_on_termination, port_taken
    from registry.defaults import tracking_uri as resolve_tracking_uri

    console = Console()
    for flag, port in (("--rest-port", rest_port), ("--grpc-port", grpc_port)):
        if port_taken(port):
            # Checked before training: a gateway left over from an earlier demo would answer instead.
            typer.echo(
                f"error: port {port} ({flag}) is in use by another process; stop it or pick another", err=True
            )
            raise typer.Exit(2)
    try:
        with exit_on_termination():
            ensemble_demo.run_demo(
                out or ensemble_demo.default_out_dir(),
                tracking_uri=resolve_tracking_uri(tracking_uri),
                members=members,
                epochs=epochs,
                retrain=retrain,
                once=once,
                rest_port=rest_port,
                grpc_port=grpc_port,
                echo=console.print,
            )
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
