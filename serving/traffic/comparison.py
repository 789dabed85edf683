"""The online comparison of one ensemble's champion and challenger: the sliding window.

The window holds the most recent requests the traffic policy sent to either side: at most
``window_requests`` of them and none older than ``window_s`` seconds (both bounds apply; older ones
drop out as new ones arrive and whenever the summary is read). A request that one side answered
alone (canaried or plain, not shadowed) counts for that side's latency and error rate; a request
both sides were asked (shadowed) is *paired*, and when both answered it is *compared* row by row
with ``serving.traffic.figures``. Figures pool the rows of every compared request in the window, so
a request of 100 rows weighs 100 times a request of one. Latency percentiles are over the requests
a side answered; its error rate is failed / asked. Each member is compared the same way with the
champion's combined answer, so a single regressed member of the challenger stands out against the
members around it.

When either alias moves to another manifest version, the window starts again: figures never mix
two versions. :meth:`ComparisonWindow.summary` builds the document of ``contracts.comparison``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from contracts.comparison import (
    SUMMARY_SCHEMA_VERSION,
    ComparisonSummary,
    MemberSummary,
    ShadowCounts,
    Side,
    SideSummary,
    WindowSummary,
)
from contracts.manifest import OutputKind
from serving.traffic.figures import Diff, diff_answers, latency, output_figures, pooled_figures
from serving.traffic.shadow import Outcome

log = logging.getLogger(__name__)


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
    """One side's answer to a request: the combined outputs, or the error (a short reason) if it failed.

    ``kinds`` maps each output name to its manifest kind; ``members`` is empty unless the core
    asked for the members' own answers.
    """

    version: int
    latency_s: float
    outputs: Mapping[str, np.ndarray] | None = None
    kinds: Mapping[str, OutputKind] = field(default_factory=dict)
    error: str | None = None
    members: Sequence[MemberObservation] = ()

    @property
    def answer(self) -> Mapping[str, np.ndarray] | None:
        """The outputs if this side answered; None if it failed."""
        return self.outputs if self.error is None else None


# --- the window ---------------------------------------------------------------------------------
MemberKey = tuple[Side, str, int]


@dataclass(frozen=True, slots=True)
class _Call:
    """One side's or one member's part in a request: answered or not, how fast, how different."""

    ok: bool
    latency_s: float
    diffs: Mapping[str, Diff]


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    sides: Mapping[Side, _Call]
    members: Mapping[MemberKey, _Call]

    @property
    def paired(self) -> bool:
        return len(self.sides) == 2

    @property
    def compared(self) -> bool:
        return self.paired and all(call.ok for call in self.sides.values())


@dataclass(slots=True)
class _Tally:
    """The calls of one side or one member now in the window, summed as they come and go."""

    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=deque)
    diffs: dict[str, Diff] = field(default_factory=dict)

    def add(self, call: _Call, sign: int = 1) -> None:
        """Count ``call`` in (``sign=-1``: out; calls leave in the order they came)."""
        self.requests += sign
        if not call.ok:
            self.errors += sign
        elif sign > 0:
            self.latencies.append(call.latency_s)
        else:
            self.latencies.popleft()
        for name, part in call.diffs.items():
            self.diffs.setdefault(name, Diff()).add(part, sign)
        if self.requests == 0:
            self.diffs.clear()  # exact zeros again, whatever rounding the subtractions left

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one request added: the challenger's differences per output (empty unless compared)."""

    diffs: Mapping[str, Diff]


class ComparisonWindow:
    """The sliding window of one ensemble's champion and challenger, and its summary.

    Every request's figures are computed once, when it is recorded, and kept as running sums, so
    reading the summary costs the same whatever the window holds.
    """

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
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        self._sides: dict[Side, _Tally] = {"champion": _Tally(), "challenger": _Tally()}
        self._members: dict[MemberKey, _Tally] = {}
        self._paired = self._compared = 0
        self._versions: dict[Side, int | None] = {"champion": None, "challenger": None}
        self._kinds: dict[str, OutputKind] = {}
        self._shadow: dict[Outcome, int] = {"answered": 0, "failed": 0, "dropped": 0}

    def alias(self, side: Side) -> str:
        return self.champion if side == "champion" else self.challenger

    def count_shadow(self, outcome: Outcome) -> None:
        """One more shadow call answered, failed or dropped (counted since start, not windowed)."""
        self._shadow[outcome] += 1

    def resize(self, max_requests: int, max_age_s: float) -> None:
        """New bounds (a reloaded policy); the requests inside them are kept."""
        self.max_requests, self.max_age_s = max_requests, max_age_s
        self._evict(self._clock())

    def record(self, champion: SideObservation | None, challenger: SideObservation | None) -> Recorded:
        """Add one request: either side may be missing (not asked), failed, or answered."""
        observed: dict[Side, SideObservation] = {}
        if champion is not None:
            observed["champion"] = champion
        if challenger is not None:
            observed["challenger"] = challenger
        if not observed:
            return Recorded({})
        now = self._clock()
        self._follow_versions(observed)
        kinds = dict(observed.get("champion", next(iter(observed.values()))).kinds)
        self._kinds.update(kinds)
        members = [(side, m) for side, o in observed.items() for m in o.members]
        # Everything is compared with the champion's combined answer: the one in production.
        answers = [challenger.answer if challenger is not None else None] + [
            m.outputs if m.error is None else None for _, m in members
        ]
        reference = champion.answer if champion is not None else None
        diffs = diff_answers(kinds, reference, answers) if reference is not None else [{} for _ in answers]
        sides = {side: _Call(o.answer is not None, o.latency_s, {}) for side, o in observed.items()}
        if challenger is not None:
            sides["challenger"] = _Call(challenger.answer is not None, challenger.latency_s, diffs[0])
        entry = _Entry(
            at=now,
            sides=sides,
            members={
                (side, m.name, m.version): _Call(answer is not None, m.latency_s, part)
                for (side, m), answer, part in zip(members, answers[1:], diffs[1:], strict=True)
            },
        )
        self._entries.append(entry)
        self._count(entry, 1)
        self._evict(now)
        return Recorded(diffs[0])

    def _count(self, entry: _Entry, sign: int) -> None:
        self._paired += sign * entry.paired
        self._compared += sign * entry.compared
        for side, call in entry.sides.items():
            self._sides[side].add(call, sign)
        for key, call in entry.members.items():
            tally = self._members.setdefault(key, _Tally())
            tally.add(call, sign)
            if tally.requests == 0:
                del self._members[key]

    def _follow_versions(self, observed: Mapping[Side, SideObservation]) -> None:
        for side, observation in observed.items():
            known = self._versions[side]
            if known is not None and known != observation.version:
                log.info(
                    "%s@%s moved from version %s to %s: the comparison window starts again",
                    self.ensemble,
                    self.alias(side),
                    known,
                    observation.version,
                )
                self._entries.clear()
                self._sides = {"champion": _Tally(), "challenger": _Tally()}
                self._members.clear()
                self._paired = self._compared = 0
            self._versions[side] = observation.version

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_requests or now - entries[0].at > self.max_age_s):
            self._count(entries.popleft(), -1)

    def summary(self) -> ComparisonSummary:
        """The window's figures now (requests that have aged out are dropped first)."""
        now = self._clock()
        self._evict(now)
        pairs = self._sides["challenger"].diffs
        return ComparisonSummary(
            schema_version=SUMMARY_SCHEMA_VERSION,
            ensemble=self.ensemble,
            champion=self._side_summary("champion"),
            challenger=self._side_summary("challenger"),
            window=WindowSummary(
                max_requests=self.max_requests,
                max_age_s=self.max_age_s,
                requests=len(self._entries),
                oldest_age_s=now - self._entries[0].at if self._entries else None,
            ),
            paired=self._paired,
            compared=self._compared,
            classification=pooled_figures(pairs, self._kinds, "probabilities"),
            regression=pooled_figures(pairs, self._kinds, "predictions"),
            outputs=output_figures(pairs, self._kinds),
            members=[
                MemberSummary(
                    side=side,
                    member=name,
                    version=version,
                    requests=tally.requests,
                    errors=tally.errors,
                    error_rate=tally.error_rate,
                    latency_s=latency(tally.latencies),
                    outputs=output_figures(tally.diffs, self._kinds),
                )
                for (side, name, version), tally in sorted(
                    self._members.items(), key=lambda item: (item[0][0] != "champion", item[0][1], item[0][2])
                )
            ],
            shadow=ShadowCounts(**self._shadow),
        )

    def _side_summary(self, side: Side) -> SideSummary:
        tally = self._sides[side]
        return SideSummary(
            alias=self.alias(side),
            version=self._versions[side],
            requests=tally.requests,
            errors=tally.errors,
            error_rate=tally.error_rate,
            latency_s=latency(tally.latencies),
        )
