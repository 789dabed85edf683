"""The sync sidecar's Prometheus metrics (``ensemble sync --watch --metrics-port``), on a registry of its own.

Imported only when metrics are asked for: ``prometheus_client`` comes with the ``serving`` extra.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from registry.sync import PassOutcome, SyncResult

OUTCOME = "outcome"


class SyncMetrics:
    """Passes by outcome, the last good pass, and the versions the grace rule keeps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.passes = Counter(
            "ensemble_sync_passes",
            "Sync passes by outcome: ok, registry_error, filesystem_error, error.",
            [OUTCOME],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "ensemble_sync_last_success_timestamp_seconds",
            "When the last pass without an error ended (Unix time).",
            registry=self.registry,
        )
        self.kept = Gauge(
            "ensemble_sync_versions_kept",
            "Versions no alias names any more, kept listed and on disk by the grace rule.",
            registry=self.registry,
        )

    def record(self, outcome: PassOutcome, result: SyncResult | None) -> None:
        self.passes.labels(outcome).inc()
        if outcome == "ok":
            self.last_success.set(time.time())
        if result is not None:
            self.kept.set(len(result.kept))

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on every interface, from a daemon thread; OSError if the port is taken."""
        start_http_server(port, registry=self.registry)
