"""The gateway's Prometheus metrics: one private registry, names prefixed ``ensemble_``.

Label names are module constants so dashboards, alerts and tests spell them one way. Under
``ensemble serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) every worker
writes its values to that directory and a scrape of any worker answers the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

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

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where the workers of one supervisor write their metric values (prometheus-client's name)."""


class GatewayMetrics:
    """Every series the gateway exports, registered on a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_ENV) or None
        self._request_series(self.registry)
        self._member_series(self.registry)
        self._manifest_series(self.registry)
        self.worker_requests: Gauge | None = None
        if self.multiprocess_dir is not None:
            # Counters are summed over workers; this one keeps each worker's share apart (pid label),
            # which shows how evenly the kernel spreads connections.
            self.worker_requests = Gauge(
                f"{PREFIX}_worker_requests",
                "Requests answered by each gateway worker process since it started.",
                [PROTOCOL],
                multiprocess_mode="liveall",
                registry=self.registry,
            )

    def answered(self, protocol: str, code: str, seconds: float) -> None:
        """One request answered: its status code and its latency (and the worker's share)."""
        self.requests.labels(protocol, code).inc()
        self.request_latency.labels(protocol).observe(seconds)
        if self.worker_requests is not None:
            self.worker_requests.labels(protocol).inc()

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
            f"{PREFIX}_in_flight_requests",
            "Requests being served right now.",
            [PROTOCOL],
            multiprocess_mode="livesum",
            registry=r,
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
            "(read at scrape time; under several workers, those of the worker that answers the scrape).",
            [MEMBER, VERSION, BACKEND],
            multiprocess_mode="livemax",
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
            multiprocess_mode="livemax",
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
            multiprocess_mode="livemax",
            registry=r,
        )
        self.last_good_saves = Counter(
            f"{PREFIX}_manifest_last_good_saves",
            "Writes of the last-known-good manifest file, by outcome: saved, failed.",
            [OUTCOME],
            registry=r,
        )

    def serving_manifests(self, served: list[tuple[str, str, str]]) -> None:
        """The manifests served now, as (ensemble, version, label): the info gauge shows only these."""
        gauge = self.manifest_info
        if self.multiprocess_dir is None:
            gauge.clear()
        else:
            # clear() cannot reach the shared files: the old series go to 0, which the scrape drops.
            for metric in gauge.collect():
                for sample in metric.samples:
                    gauge.labels(**sample.labels).set(0)
        for labels in served:
            gauge.labels(*labels).set(1)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes: this process's series, or every worker's together."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_WorkersCollector(self.registry, self.multiprocess_dir, self._per_worker_names()))
        return generate_latest(merged)

    def _per_worker_names(self) -> frozenset[str]:
        """Series read at scrape time from this worker's own state: its breakers."""
        return frozenset({f"{PREFIX}_member_breaker_open"})


class _WorkersCollector(Collector):
    """Every worker's values from the shared directory, plus what only this worker can read.

    Series computed at scrape time (breaker gauges, the traffic comparison windows) are not in the
    directory; they come from this worker's registry. A gauge set back to 0 when it stopped meaning
    anything (an old manifest's info) is dropped, as ``clear()`` drops it in one process.
    """

    def __init__(self, own: CollectorRegistry, path: str, per_worker: frozenset[str]) -> None:
        self._own = own
        self._shared = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self._per_worker = per_worker

    def collect(self) -> Iterable[Metric]:
        files = self._shared.collect()  # type: ignore[no-untyped-call]
        shared = {m.name: m for m in files if m.name not in self._per_worker}
        yield from _without_cleared(shared.values())
        for metric in self._own.collect():
            if metric.name not in shared:
                yield metric


def _without_cleared(metrics: Iterable[Metric]) -> Iterator[Metric]:
    for metric in metrics:
        if metric.name == f"{PREFIX}_manifest_info":
            metric.samples = [s for s in metric.samples if s.value != 0]
        yield metric
