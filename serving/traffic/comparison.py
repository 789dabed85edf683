"""The online comparison of one ensemble's champion and challenger: a sliding window and its summary.

The window holds the most recent requests the traffic policy sent to either side, at most
``window_requests`` of them and none older than ``window_s`` seconds (both bounds apply; older
ones drop out as new ones arrive and whenever the summary is read). A request answered by one side
only (a canaried or plain request that was not shadowed) counts for that side's latency and error
rate; a request that both sides answered (shadowed) is *paired* and also compared row by row:

* an output of kind ``probabilities`` (classification): the **agreement** is the fraction of rows
  whose argmax is the same on both sides (for a single-column output, whether both are >= 0.5),
  and the **mean absolute difference** is the mean of ``|p_challenger - p_champion|`` over every
  element;
* an output of kind ``predictions`` (regression): the **mean absolute difference** as above and the
  **mean relative difference**, the mean of ``|y_challenger - y_champion| / max(|y_champion|, 1e-12)``.

Figures pool the rows (elements) of every paired request in the window, so a request of 100 rows
weighs 100 times a request of one. Latency percentiles (p50, p99, numpy's linear interpolation) are
over the requests a side *answered*; its error rate is failed / observed. Each member that answered
is compared the same way with the champion's combined answer, so a single regressed member of the
challenger stands out against the members around it.

When either alias moves to another manifest version, the window starts again: figures never mix
two versions. :meth:`ComparisonWindow.summary` is the JSON document that
``GET /v1/ensembles/NAME/comparison`` returns (schema: :class:`ComparisonSummary`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from registry.manifest import OutputKind
from serving.traffic.routing import Side
from serving.traffic.shadow import Outcome

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1
REL_EPS = 1e-12
"""Floor of the champion's magnitude in the relative difference: a zero prediction divides by this."""


# --- what the core hands in ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MemberObservation:
    """One member's call inside a side's fan-out: its answer (None if it failed) and latency."""

    name: str
    version: int
    latency_s: float
    outputs: Mapping[str, np.ndarray] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SideObservation:
    """One side's answer to a request: the combined outputs, or the error (one line) if it failed."""

    version: int
    latency_s: float
    outputs: Mapping[str, np.ndarray] | None = None
    kinds: Mapping[str, OutputKind] = field(default_factory=dict)
    error: str | None = None
    members: Sequence[MemberObservation] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and self.outputs is not None


# --- sums that figures are made of ---------------------------------------------------------------
@dataclass(slots=True)
class Diff:
    """Sums over compared rows of one kind: agreement, absolute and relative differences."""

    rows: int = 0
    decisions: int = 0
    agreeing: int = 0
    elements: int = 0
    abs_sum: float = 0.0
    rel_sum: float = 0.0

    def add(self, other: Diff) -> None:
        self.rows += other.rows
        self.decisions += other.decisions
        self.agreeing += other.agreeing
        self.elements += other.elements
        self.abs_sum += other.abs_sum
        self.rel_sum += other.rel_sum


def diff(kind: OutputKind, reference: np.ndarray, other: np.ndarray) -> Diff | None:
    """How ``other`` differs from ``reference`` (same shape, rows first); None if not comparable."""
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(other, dtype=np.float64)
    if ref.shape != new.shape or ref.ndim == 0:
        return None
    gap = np.abs(new - ref)
    result = Diff(rows=int(ref.shape[0]), elements=int(ref.size), abs_sum=float(gap.sum()))
    if kind == "probabilities":
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            same = np.argmax(ref, axis=-1) == np.argmax(new, axis=-1)
        else:  # one probability per row: the decision is the 0.5 threshold
            same = (ref >= 0.5) == (new >= 0.5)
        result.decisions = int(same.size)
        result.agreeing = int(np.count_nonzero(same))
    else:
        result.rel_sum = float((gap / np.maximum(np.abs(ref), REL_EPS)).sum())
    return result


def diff_outputs(
    kinds: Mapping[str, OutputKind], reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]
) -> dict[str, Diff]:
    """:func:`diff` of every output both answers have, by output name."""
    found: dict[str, Diff] = {}
    for name, kind in kinds.items():
        if name in reference and name in other:
            compared = diff(kind, reference[name], other[name])
            if compared is not None:
                found[name] = compared
    return found


# --- the summary's schema -------------------------------------------------------------------------
class Latency(BaseModel):
    """Latency percentiles in seconds over the answered requests; null with none."""

    p50: float | None = None
    p99: float | None = None


class Figures(BaseModel):
    """How the challenger's answers differ from the champion's over the compared rows."""

    rows: int = Field(description="Rows compared.")
    agreement: float | None = Field(
        default=None, description="Classification: fraction of argmax decisions that agree."
    )
    mean_abs_diff: float | None = Field(default=None, description="Mean absolute difference per element.")
    mean_rel_diff: float | None = Field(
        default=None, description="Regression: mean |difference| / max(|champion|, 1e-12) per element."
    )


class OutputFigures(Figures):
    kind: OutputKind


class SideSummary(BaseModel):
    """One side over the window."""

    alias: str
    version: int | None = Field(description="Manifest version the alias served in this window.")
    requests: int = Field(description="Requests this side was asked to answer.")
    errors: int
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
    outputs: dict[str, OutputFigures] = Field(description="Compared with the champion's combined answer.")


class WindowSummary(BaseModel):
    max_requests: int
    max_age_s: float
    requests: int = Field(description="Requests in the window (answered by either side or both).")
    oldest_age_s: float | None = Field(description="Age of the oldest request in the window.")


class ShadowCounts(BaseModel):
    """Shadow calls since the gateway started (not only the window)."""

    answered: int = 0
    failed: int = 0
    dropped: int = 0


class ComparisonSummary(BaseModel):
    """``GET /v1/ensembles/NAME/comparison``: champion vs challenger over the sliding window."""

    schema_version: int = SUMMARY_SCHEMA_VERSION
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


def _answer(observation: SideObservation | None) -> Mapping[str, np.ndarray] | None:
    """The combined outputs of a side that answered; None if it failed or was not asked."""
    if observation is None or observation.error is not None:
        return None
    return observation.outputs


def figures(total: Diff, kind: OutputKind) -> Figures:
    """The figures of pooled sums."""
    return Figures(
        rows=total.rows,
        agreement=total.agreeing / total.decisions if kind == "probabilities" and total.decisions else None,
        mean_abs_diff=total.abs_sum / total.elements if total.elements else None,
        mean_rel_diff=total.rel_sum / total.elements if kind == "predictions" and total.elements else None,
    )


def latency(values: Sequence[float]) -> Latency:
    if not values:
        return Latency()
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return Latency(p50=float(p50), p99=float(p99))


def _rate(errors: int, requests: int) -> float | None:
    return errors / requests if requests else None


# --- the window -------------------------------------------------------------------------------------
MemberKey = tuple[Side, str, int]


@dataclass(frozen=True, slots=True)
class _SideRecord:
    ok: bool
    latency_s: float


@dataclass(frozen=True, slots=True)
class _MemberRecord:
    ok: bool
    latency_s: float
    diffs: Mapping[str, Diff]


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    sides: Mapping[Side, _SideRecord]
    diffs: Mapping[str, Diff]
    members: Mapping[MemberKey, _MemberRecord]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one request added: the paired figures per output (empty unless both sides answered)."""

    diffs: Mapping[str, Diff]
    kinds: Mapping[str, OutputKind]


class ComparisonWindow:
    """The sliding window of one ensemble's champion and challenger, and its summary."""

    def __init__(
        self,
        ensemble: str,
        champion: str,
        challenger: str,
        *,
        max_requests: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ensemble = ensemble
        self.champion = champion
        self.challenger = challenger
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self._shadow: dict[Outcome, int] = {"answered": 0, "failed": 0, "dropped": 0}
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        self._versions: dict[Side, int | None] = {"champion": None, "challenger": None}
        self._kinds: dict[str, OutputKind] = {}

    def count_shadow(self, outcome: Outcome) -> None:
        """One more shadow call answered, failed or dropped (kept since start, outside the window)."""
        self._shadow[outcome] += 1

    def resize(self, max_requests: int, max_age_s: float) -> None:
        """New bounds (a reloaded policy); the requests inside them are kept."""
        self.max_requests, self.max_age_s = max_requests, max_age_s
        self._evict(self._clock())

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, champion: SideObservation | None, challenger: SideObservation | None) -> Recorded:
        """Add one request: either side may be missing (not asked), failed, or answered."""
        now = self._clock()
        observed: dict[Side, SideObservation] = {}
        if champion is not None:
            observed["champion"] = champion
        if challenger is not None:
            observed["challenger"] = challenger
        if not observed:
            return Recorded({}, {})
        self._follow_versions(observed)
        reference = _answer(champion)
        kinds = dict(next(iter(observed.values())).kinds if champion is None else champion.kinds)
        self._kinds.update(kinds)
        diffs: dict[str, Diff] = {}
        answered = _answer(challenger)
        if reference is not None and answered is not None:
            diffs = diff_outputs(kinds, reference, answered)
        members: dict[MemberKey, _MemberRecord] = {}
        for side, observation in observed.items():
            for member in observation.members:
                member_answer = member.outputs if member.error is None else None
                member_diffs: dict[str, Diff] = {}
                if member_answer is not None and reference is not None:
                    member_diffs = diff_outputs(kinds, reference, member_answer)
                members[(side, member.name, member.version)] = _MemberRecord(
                    member_answer is not None, member.latency_s, member_diffs
                )
        self._entries.append(
            _Entry(
                at=now,
                sides={side: _SideRecord(o.ok, o.latency_s) for side, o in observed.items()},
                diffs=diffs,
                members=members,
            )
        )
        self._evict(now)
        return Recorded(diffs, kinds)

    def _follow_versions(self, observed: Mapping[Side, SideObservation]) -> None:
        for side, observation in observed.items():
            known = self._versions[side]
            if known is not None and known != observation.version:
                log.info(
                    "%s@%s moved from version %s to %s: the comparison window starts again",
                    self.ensemble,
                    self.champion if side == "champion" else self.challenger,
                    known,
                    observation.version,
                )
                self._entries.clear()
            self._versions[side] = observation.version

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_requests or now - entries[0].at > self.max_age_s):
            entries.popleft()

    def summary(self) -> ComparisonSummary:
        """The window's figures now (requests that have aged out are dropped first)."""
        now = self._clock()
        self._evict(now)
        entries = list(self._entries)
        side_latency: dict[Side, list[float]] = {"champion": [], "challenger": []}
        side_counts: dict[Side, list[int]] = {"champion": [0, 0], "challenger": [0, 0]}
        per_output: dict[str, Diff] = {}
        member_latency: dict[MemberKey, list[float]] = {}
        member_counts: dict[MemberKey, list[int]] = {}
        member_totals: dict[MemberKey, dict[str, Diff]] = {}
        paired = compared = 0
        for entry in entries:
            if len(entry.sides) == 2:
                paired += 1
                compared += all(record.ok for record in entry.sides.values())
            for side, record in entry.sides.items():
                counts = side_counts[side]
                counts[0] += 1
                if record.ok:
                    side_latency[side].append(record.latency_s)
                else:
                    counts[1] += 1
            for name, part in entry.diffs.items():
                per_output.setdefault(name, Diff()).add(part)
            for key, member in entry.members.items():
                counts = member_counts.setdefault(key, [0, 0])
                counts[0] += 1
                if member.ok:
                    member_latency.setdefault(key, []).append(member.latency_s)
                else:
                    counts[1] += 1
                totals = member_totals.setdefault(key, {})
                for name, part in member.diffs.items():
                    totals.setdefault(name, Diff()).add(part)
        pooled: dict[OutputKind, Diff] = {}
        for name, total in per_output.items():
            pooled.setdefault(self._kind(name), Diff()).add(total)
        return ComparisonSummary(
            ensemble=self.ensemble,
            champion=self._side_summary("champion", side_counts, side_latency),
            challenger=self._side_summary("challenger", side_counts, side_latency),
            window=WindowSummary(
                max_requests=self.max_requests,
                max_age_s=self.max_age_s,
                requests=len(entries),
                oldest_age_s=now - entries[0].at if entries else None,
            ),
            paired=paired,
            compared=compared,
            classification=_figures_of(pooled, "probabilities"),
            regression=_figures_of(pooled, "predictions"),
            outputs=self._output_figures(per_output),
            members=[
                MemberSummary(
                    side=key[0],
                    member=key[1],
                    version=key[2],
                    requests=member_counts[key][0],
                    errors=member_counts[key][1],
                    error_rate=_rate(member_counts[key][1], member_counts[key][0]),
                    latency_s=latency(member_latency.get(key, [])),
                    outputs=self._output_figures(member_totals[key]),
                )
                for key in sorted(member_counts, key=lambda k: (k[0] != "champion", k[1], k[2]))
            ],
            shadow=ShadowCounts(**self._shadow),
        )

    def _output_figures(self, totals: Mapping[str, Diff]) -> dict[str, OutputFigures]:
        return {
            name: OutputFigures(kind=self._kind(name), **figures(total, self._kind(name)).model_dump())
            for name, total in sorted(totals.items())
        }

    def _kind(self, output: str) -> OutputKind:
        # Every compared output had its kind recorded with it; the fallback is never reached in use.
        return self._kinds.get(output, "predictions")

    def _side_summary(
        self, side: Side, counts: Mapping[Side, list[int]], latencies: Mapping[Side, list[float]]
    ) -> SideSummary:
        requests, errors = counts[side]
        return SideSummary(
            alias=self.champion if side == "champion" else self.challenger,
            version=self._versions[side],
            requests=requests,
            errors=errors,
            error_rate=_rate(errors, requests),
            latency_s=latency(latencies[side]),
        )


def _figures_of(totals: Mapping[OutputKind, Diff], kind: OutputKind) -> Figures | None:
    return figures(totals[kind], kind) if kind in totals else None
