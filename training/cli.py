"""Commands of the ``training``package, registered on the ``ensemble`` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``; heavy imports stay inside each command."""
