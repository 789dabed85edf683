"""The comparison summary: the JSON that ``GET /v1/ensembles/NAME/comparison`` answers, as a schema.

The gateway writes it (``serving.traffic.comparison``) and the registry's online gate
(``ensemble promote --online``) reads it with this same model. Every figure is over the comparison
window except ``shadow``, which counts since the gateway started. A figure that has nothing to be
computed from is null. ``schema_version`` changes when a field changes meaning or goes away; a
field the gateway adds is ignored by a reader that does not know it yet.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from contracts.manifest import OutputKind

SUMMARY_SCHEMA_VERSION = 1

Side = Literal["champion", "challenger"]
"""The two sides of a comparison: the alias served by default and the one tried against it."""


class Latency(BaseModel):
    """Latency percentiles in seconds over the answered requests (numpy's linear interpolation)."""

    p50: float | None = None
    p99: float | None = None


class Figures(BaseModel):
    """How one answer differs from the reference (the champion's combined answer), pooled."""

    rows: int = Field(description="Rows compared.")
    agreement: float | None = Field(
        default=None, description="Classification: fraction of argmax decisions that agree."
    )
    mean_abs_diff: float | None = Field(default=None, description="Mean absolute difference per element.")
    mean_rel_diff: float | None = Field(
        default=None, description="Regression: mean |difference| / max(|champion|, 1e-12) per element."
    )


class OutputFigures(Figures):
    """The figures of one named output."""

    kind: OutputKind


class SideSummary(BaseModel):
    """One side (champion or challenger) over the window."""

    alias: str
    version: int | None = Field(description="Manifest version the alias served in this window.")
    requests: int = Field(description="Requests this side was asked to answer.")
    errors: int = Field(description="Of those, how many it failed.")
    error_rate: float | None
    latency_s: Latency


class MemberSummary(BaseModel):
    """One member of one side, compared with the champion's combined answer."""

    side: Side
    member: str
    version: int
    requests: int
    errors: int
    error_rate: float | None
    latency_s: Latency
    outputs: dict[str, OutputFigures]


class WindowSummary(BaseModel):
    """The window's bounds and what it holds now."""

    max_requests: int
    max_age_s: float
    requests: int = Field(description="Requests in the window (asked of either side or both).")
    oldest_age_s: float | None = Field(description="Age of the oldest request in the window, in seconds.")


class ShadowCounts(BaseModel):
    """Shadow calls since the gateway started."""

    answered: int = 0
    failed: int = 0
    dropped: int = Field(default=0, description="Not sent: the shadow concurrency limit was reached.")


class ComparisonSummary(BaseModel):
    """Champion vs challenger of one ensemble over the sliding window."""

    schema_version: int = Field(
        description=f"The schema's version ({SUMMARY_SCHEMA_VERSION} now); required: a reader must know it."
    )
    ensemble: str
    champion: SideSummary
    challenger: SideSummary
    window: WindowSummary
    paired: int = Field(description="Requests in the window that both sides were asked to answer.")
    compared: int = Field(description="Paired requests that both sides answered: the figures' basis.")
    classification: Figures | None = Field(description="Pooled over the outputs of kind probabilities.")
    regression: Figures | None = Field(description="Pooled over the outputs of kind predictions.")
    outputs: dict[str, OutputFigures]
    members: list[MemberSummary]
    shadow: ShadowCounts = Field(default_factory=ShadowCounts)
