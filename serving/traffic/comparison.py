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
two versions. :meth:`ComparisonWindow.summary` builds the document of ``serving.traffic.summary``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from registry.manifest import OutputKind
from serving.traffic.figures import Diff, diff_outputs, latency, output_figures, pooled_figures
from serving.traffic.routing import Side
from serving.traffic.shadow import Outcome
from serving.traffic.summary import ComparisonSummary, MemberSummary, ShadowCounts, SideSummary, WindowSummary

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


@dataclass(slots=True)
class _Tally:
    """Calls summed over the window."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    diffs: dict[str, Diff] = field(default_factory=dict)

    def add(self, call: _Call) -> None:
        self.requests += 1
        if call.ok:
            self.latencies.append(call.latency_s)
        else:
            self.errors += 1
        for name, part in call.diffs.items():
            self.diffs.setdefault(name, Diff()).add(part)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one request added: the challenger's differences per output (empty unless compared)."""

    diffs: Mapping[str, Diff]


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
        self._clock = clock
        self._entries: deque[_Entry] = deque()
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

    def __len__(self) -> int:
        return len(self._entries)

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
        # Everything is compared with the champion's combined answer: the one in production.
        reference = champion.answer if champion is not None else None

        def call(answer: Mapping[str, np.ndarray] | None, latency_s: float, compare: bool) -> _Call:
            diffs = diff_outputs(kinds, reference, answer) if compare and reference and answer else {}
            return _Call(answer is not None, latency_s, diffs)

        sides = {side: call(o.answer, o.latency_s, side == "challenger") for side, o in observed.items()}
        members = {
            (side, m.name, m.version): call(m.outputs if m.error is None else None, m.latency_s, True)
            for side, observation in observed.items()
            for m in observation.members
        }
        self._entries.append(_Entry(at=now, sides=sides, members=members))
        self._evict(now)
        return Recorded(sides["challenger"].diffs if "challenger" in sides else {})

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
            self._versions[side] = observation.version

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_requests or now - entries[0].at > self.max_age_s):
            entries.popleft()

    def summary(self) -> ComparisonSummary:
        """The window's figures now (requests that have aged out are dropped first)."""
        now = self._clock()
        self._evict(now)
        sides: dict[Side, _Tally] = {"champion": _Tally(), "challenger": _Tally()}
        members: dict[MemberKey, _Tally] = {}
        paired = compared = 0
        for entry in self._entries:
            if len(entry.sides) == 2:
                paired += 1
                compared += all(call.ok for call in entry.sides.values())
            for side, call in entry.sides.items():
                sides[side].add(call)
            for key, call in entry.members.items():
                members.setdefault(key, _Tally()).add(call)
        pairs = sides["challenger"].diffs
        return ComparisonSummary(
            ensemble=self.ensemble,
            champion=self._side_summary("champion", sides["champion"]),
            challenger=self._side_summary("challenger", sides["challenger"]),
            window=WindowSummary(
                max_requests=self.max_requests,
                max_age_s=self.max_age_s,
                requests=len(self._entries),
                oldest_age_s=now - self._entries[0].at if self._entries else None,
            ),
            paired=paired,
            compared=compared,
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
                    members.items(), key=lambda item: (item[0][0] != "champion", item[0][1], item[0][2])
                )
            ],
            shadow=ShadowCounts(**self._shadow),
        )

    def _side_summary(self, side: Side, tally: _Tally) -> SideSummary:
        return SideSummary(
            alias=self.alias(side),
            version=self._versions[side],
            requests=tally.requests,
            errors=tally.errors,
            error_rate=tally.error_rate,
            latency_s=latency(tally.latencies),
        )
