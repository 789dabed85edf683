"""``python -m cli``: the ``ensemble`` command."""

from __future__ import annotations

from cli.main import main

main()
