"""The gateway's Prometheus metrics: one private registry, names prefixed ``ensemble_``.

Label names are module constants so dashboards, alerts and tests spell them one way.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "ensemble"

PROTOCOL = "protocol"
CODE = "code"
MEMBER = "member"
VERSION = "version"
REASON = "reason"
ENSEMBLE = "ensemble"
LABEL = "label"
OUTCOME = "outcome"
BACKEND = "backend"

PROTOCOL_REST = "rest"
PROTOCOL_GRPC = "grpc"

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_SPREAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5)


class GatewayMetrics:
    """Every series the gateway exports, registered on a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_series(self.registry)
        self._member_series(self.registry)
        self._manifest_series(self.registry)

    def _request_series(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by protocol and status code (HTTP status or gRPC code name).",
            [PROTOCOL, CODE],
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request received to answer sent.",
            [PROTOCOL],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "Requests being served right now.", [PROTOCOL], registry=r
        )

    def _member_series(self, r: CollectorRegistry) -> None:
        self.member_latency = Histogram(
            f"{PREFIX}_member_duration_seconds",
            "Latency of one backend call to a member, successful or not.",
            [MEMBER, VERSION],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.member_failures = Counter(
            f"{PREFIX}_member_failures",
            "Member calls that gave no answer, by reason (deadline, unavailable, circuit_open, ...).",
            [MEMBER, VERSION, REASON],
            registry=r,
        )
        self.member_cancelled = Counter(
            f"{PREFIX}_member_cancelled",
            "Member calls cancelled because their answer was no longer needed, not failures "
            "(reason not_needed: the quorum could no longer be met).",
            [MEMBER, VERSION, REASON],
            registry=r,
        )
        self.members_answered = Histogram(
            f"{PREFIX}_members_answered",
            "Members whose answers went into an ensemble answer.",
            buckets=tuple(float(n) for n in range(1, 17)),
            registry=r,
        )
        self.degraded = Counter(
            f"{PREFIX}_degraded_responses",
            "Answers combined from fewer than all members (quorum held).",
            registry=r,
        )
        self.disagreement = Histogram(
            f"{PREFIX}_disagreement",
            "Mean weighted standard deviation across members of each answer: the uncertainty signal "
            "(multi-label: the weighted fraction of label decisions members differ on).",
            buckets=_SPREAD_BUCKETS,
            registry=r,
        )
        self.breaker_open = Gauge(
            f"{PREFIX}_member_breaker_open",
            "1 while the circuit breaker of a member version on one backend address refuses calls "
            "(read at scrape time).",
            [MEMBER, VERSION, BACKEND],
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests coalesced into one fan-out by micro-batching.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def _manifest_series(self, r: CollectorRegistry) -> None:
        self.manifest_info = Gauge(
            f"{PREFIX}_manifest_info",
            "1 for each manifest being served, by ensemble, manifest version and label.",
            [ENSEMBLE, VERSION, LABEL],
            registry=r,
        )
        self.reloads = Counter(
            f"{PREFIX}_manifest_reloads",
            "Manifest loads and reloads, by outcome: loaded, waiting (members still loading), failed.",
            [OUTCOME],
            registry=r,
        )
        self.last_good = Gauge(
            f"{PREFIX}_manifest_last_good",
            "1 while the gateway serves the last-known-good manifest from disk because the registry "
            "has not answered since it started.",
            registry=r,
        )
        self.last_good_saves = Counter(
            f"{PREFIX}_manifest_last_good_saves",
            "Writes of the last-known-good manifest file, by outcome: saved, failed.",
            [OUTCOME],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
