"""What logging a training to MLflow produced: its runs and, once registered, its versions.

Its own module so that :mod:`registry.tracking` (which fills it in) and
:mod:`registry.registration` (which adds the registered versions) both use it without either
importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class LoggedTraining:
    """What :func:`registry.tracking.record_training` logged and registered."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    member_run_ids: list[str]
    """The served members' runs, in the manifest's order."""
    member_versions: dict[str, int] = field(default_factory=dict)
    dropped_run_ids: list[str] = field(default_factory=list)
    """Runs of members trained but not served (search trials not kept, pruned members)."""
    ensemble_version: int | None = None
    alias: str | None = None
