"""The ``ensemble`` command: one entry point whose subcommands live in each package's ``cli`` module.

Each package registers its own commands and imports its heavy dependencies (TensorFlow, mlflow,
the gateway) only inside the command that needs them, so ``ensemble --help`` starts instantly.
"""

from __future__ import annotations

import typer


def build_app() -> typer.Typer:
    from registry import cli as registry_cli
    from serving import cli as serving_cli
    from training import cli as training_cli

    app = typer.Typer(
        name="ensemble",
        help="Train Keras model ensembles and serve them with TF Serving's API.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    training_cli.register(app)
    registry_cli.register(app)
    serving_cli.register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
