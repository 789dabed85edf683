"""The gateway's composition root: settings, metrics, the core, its member clients and its manifests.

:class:`Gateway` builds everything one gateway process holds and keeps it current: it loads the
manifests (falling back to the last-known-good file when the registry cannot be reached), watches
the source and swaps a new manifest in once its members' quorum is loaded, and answers readiness
for REST, gRPC health and the Open Inference Protocol alike. ``serving.app`` puts it behind
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health

from serving.backends import BackendPool
from serving.batching import BatchingPolicy
from serving.ensemble import EnsembleCore
from serving.fanout import FanOutPolicy
from serving.grpc.server import set_serving
from serving.last_good import LastGoodStore, SavedManifests
from serving.lifecycle import Background
from serving.manifest_source import (
    FileManifestSource,
    ManifestLoadError,
    ManifestSource,
    RegistryManifestSource,
    ServedManifests,
    first_load,
    moved,
    placements,
    served_version,
    switchable,
    watch,
)
from serving.metrics import GatewayMetrics
from serving.oip.service import OipService
from serving.settings import GatewaySettings
from serving.traffic.controller import TrafficController
from serving.traffic.policy import TrafficPolicy
from serving.traffic.reload import TrafficReloader, TrafficReloadError, watch_traffic

log = logging.getLogger("serving.gateway")

FIRST_RETRY_S = 0.5
"""The first wait before loading the manifest source again, when it failed at start (then doubled)."""


class Gateway:
    """Everything one gateway process holds: settings, metrics, the core and its member clients.

    It starts without the registry when it has to: with the last-known-good manifest when one is
    saved, else with no manifest (every request UNAVAILABLE, not ready) while it retries with
    backoff. Either way it keeps polling, and serves the registry's answer once it comes.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        source: ManifestSource,
        served: ServedManifests | None,
        metrics: GatewayMetrics | None = None,
        last_good: LastGoodStore | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.metrics = metrics or GatewayMetrics()
        self.last_good = last_good
        self.pool = BackendPool(
            settings.addresses_for,
            hedge_after_s=settings.hedge_after_s,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            max_message_bytes=member_message_bytes(settings),
            metrics=self.metrics,
        )
        batching = (
            BatchingPolicy(
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_delay_ms / 1000,
                max_in_flight=settings.max_inflight_batches,
            )
            if settings.batching
            else None
        )
        # Shadow calls get the request deadline too: a hung challenger holds a slot no longer.
        self.traffic = TrafficController(
            settings.traffic, self.metrics.registry, shadow_timeout_s=settings.request_deadline_s
        )
        if served is not None:
            self._place(served)
        self.core = EnsembleCore(
            served,
            self.pool,
            policy=FanOutPolicy(
                member_deadline_s=settings.member_deadline_s,
                request_deadline_s=settings.request_deadline_s,
            ),
            metrics=self.metrics,
            batching=batching,
            traffic=self.traffic,
        )
        self.oip = OipService(
            self.core,
            server_name="tf-ensemble gateway",
            platform="ensemble",
            ready=self.check_ready,
            max_decoded_bytes=settings.max_decoded_bytes,
        )
        self.health = health.aio.HealthServicer()
        self.draining = False
        self.from_last_good: SavedManifests | None = None
        """Set while serving the last-known-good file because the source has not answered."""
        self.source_error = ""
        """Why the source could not be loaded at start (while that still matters)."""
        self._ready = False
        self._ready_reason = "starting"
        self._background = Background(log)

    @classmethod
    async def open(cls, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> Gateway:
        """Load the manifests once and build the gateway.

        A source that answers no (a bad file, no such ensemble or alias) is ManifestLoadError: the
        settings are wrong. One that cannot be reached leaves the gateway on its last-known-good
        manifest, or on none, and :meth:`start_background` keeps trying.
        """
        source = manifest_source(settings)
        store = (
            LastGoodStore(settings.last_good_manifest, source.describe())
            if settings.last_good_manifest is not None and isinstance(source, RegistryManifestSource)
            else None
        )
        try:
            served = await source.load()
        except ManifestLoadError as exc:
            if not exc.transient:
                raise
            gateway = cls(settings, source, None, metrics, store)
            gateway._start_without_source(exc)
            return gateway
        gateway = cls(settings, source, served, metrics, store)
        gateway.metrics.reloads.labels("loaded").inc()
        await gateway._save_last_good(served)
        return gateway

    def _start_without_source(self, error: ManifestLoadError) -> None:
        self.source_error = str(error)
        self.metrics.reloads.labels("failed").inc()
        saved: SavedManifests | None = None
        if self.last_good is not None:
            try:
                saved = self.last_good.load()
            except ManifestLoadError as bad:
                log.warning("the last-known-good manifest cannot be used: %s", bad)
        if saved is None:
            log.warning("no manifest to serve yet, retrying with backoff: %s", error)
            return
        self._place(saved.served)
        self.core.swap(saved.served)
        self.from_last_good = saved
        self.metrics.last_good.set(1)
        log.warning(
            "serving the last-known-good manifest saved %s (%s v%s) from %s: %s",
            saved.saved_at,
            saved.served.name,
            served_version(saved.served.default),
            self.last_good.path if self.last_good else "",
            error,
        )

    async def _save_last_good(self, served: ServedManifests) -> None:
        if self.last_good is None:
            return
        try:
            await asyncio.to_thread(self.last_good.save, served)
        except OSError as exc:
            self.metrics.last_good_saves.labels("failed").inc()
            log.warning("cannot save the last-known-good manifest to %s: %s", self.last_good.path, exc)
            return
        self.metrics.last_good_saves.labels("saved").inc()

    def _source_answered(self, served: ServedManifests) -> None:
        """The source answered again: what it says is served now (switched, or the same)."""
        if self.from_last_good is not None or self.source_error:
            log.info("manifest source %s answers again", self.source.describe())
        self.from_last_good = None
        self.source_error = ""
        self.metrics.last_good.set(0)

    # --- readiness and reload ------------------------------------------------------------------
    async def check_ready(self) -> tuple[bool, str]:
        if self.draining:
            ready, reason = False, "draining"
        else:
            ready, reason = await self.core.ready()
            if self.core.loaded is None:
                reason = f"{reason} (last error: {self.source_error}); retrying"
            elif self.from_last_good is not None:
                reason = (
                    f"serving the last-known-good manifest saved {self.from_last_good.saved_at}, the "
                    f"manifest source has not answered since start ({self.source_error}); {reason}"
                )
        if ready != self._ready:
            log.info("readiness: %s (%s)", "ready" if ready else "not ready", reason)
        self._ready, self._ready_reason = ready, reason
        await set_serving(self.health, ready)
        return ready, reason

    async def _monitor_readiness(self, interval_s: float) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check_ready()
            await asyncio.sleep(interval_s)

    async def _swap(self, served: ServedManifests) -> bool:
        """Serve ``served``, alias by alias, as each one's members' quorum is loaded on its
        backends; whether all of it is served now (else it is offered again on the next poll).

        The registry sync and the backends poll too, so right after an alias moves the new
        member versions may not be loaded yet: switching then would fail requests that the old
        manifest still answers. Each alias moves on its own (``switchable``): a challenger whose
        backends are down or still loading never holds back the champion's move.
        """
        self._place(served)
        current = self.core.loaded
        changed = moved(served, current)
        found = await self.core.quorum_problems(changed)
        problems = {id(m): problem for m, problem in zip(changed, found, strict=True)}
        taken = switchable(served, current, lambda m: problems[id(m)] is None)
        if taken is not None and taken != current:
            self._take(taken)
            await self._save_last_good(taken)
        if taken == served:
            return True
        self.metrics.reloads.labels("waiting").inc()
        waiting = "; ".join(p for p in problems.values() if p is not None)
        log.info("new manifest not switched to yet, members still loading: %s", waiting)
        return False

    def _place(self, served: ServedManifests) -> None:
        """Tell the pool which alias each member is served under (``alias_backends`` places them)."""
        self.pool.place(placements(served))

    def _take(self, served: ServedManifests) -> None:
        self.core.swap(served)
        # Breakers belong to member versions: the ones no longer served go, new ones start closed.
        self.pool.retain(
            m for manifest in (served.default, *served.labels.values()) for m in manifest.members
        )
        self.metrics.reloads.labels("loaded").inc()
        self._source_answered(served)
        versions = {label: served_version(m) for label, m in served.labels.items()}
        log.info("manifest loaded: %s v%s %s", served.name, served_version(served.default), versions or "")

    def _loaded(self, served: ServedManifests) -> None:
        if served == self.core.loaded:
            self._source_answered(served)

    def _reload_failed(self, error: ManifestLoadError) -> None:
        self.metrics.reloads.labels("failed").inc()
        log.warning("manifest reload failed, still serving the previous one: %s", error)

    def _first_load_failed(self, error: ManifestLoadError, retry_in_s: float) -> None:
        self.metrics.reloads.labels("failed").inc()
        self.source_error = str(error)
        log.warning("no manifest yet, retrying in %.1fs: %s", retry_in_s, error)

    async def _watch(self) -> None:
        current = self.core.loaded
        if current is None:
            current = await first_load(
                self.source,
                first_delay_s=min(FIRST_RETRY_S, self.settings.poll_interval_s),
                max_delay_s=self.settings.poll_interval_s,
                on_error=self._first_load_failed,
            )
            # Nothing is served yet: the first answer beats none, whatever its members' state.
            self._take(current)
            await self._save_last_good(current)
            await self.check_ready()
        await watch(
            self.source,
            current,
            self.settings.poll_interval_s,
            self._swap,
            self._reload_failed,
            on_loaded=self._loaded,
        )

    def _traffic_reload_failed(self, error: TrafficReloadError) -> None:
        log.warning("traffic policy not reloaded, the policies in force stay: %s", error)

    def _apply_traffic(self, policies: dict[str, TrafficPolicy]) -> None:
        self.traffic.update(policies)
        log.info("traffic policy reloaded: %s", ", ".join(sorted(policies)) or "none")

    def start_background(self) -> None:
        """Start watching the manifest source, the members' readiness and the traffic policies."""
        self._background.start(
            {
                "manifest watch": self._watch(),
                "readiness monitor": self._monitor_readiness(2.0),
                "traffic watch": watch_traffic(
                    TrafficReloader(self.settings),
                    self.settings.poll_interval_s,
                    self._apply_traffic,
                    self._traffic_reload_failed,
                ),
            }
        )

    async def close(self) -> None:
        """Stop the background loops, cancel the shadow calls in flight, close the member channels.

        Called after the drain: every accepted client request has its answer; a shadow call still
        running only fed the comparison, so it is cancelled rather than waited for.
        """
        await self._background.stop()
        await self.traffic.close()
        await self.pool.close()


def member_message_bytes(settings: GatewaySettings) -> int:
    """The largest message exchanged with members: a request decoded up to its bound, plus framing."""
    return max(settings.max_body_bytes * 4, settings.max_decoded_bytes + 1024 * 1024, 16 * 1024 * 1024)


def manifest_source(settings: GatewaySettings) -> ManifestSource:
    """The manifest source the settings name: a file, or registry aliases."""
    if settings.manifest is not None:
        return FileManifestSource(settings.manifest)
    if settings.tracking_uri is not None and settings.ensemble is not None:
        return RegistryManifestSource(settings.tracking_uri, settings.ensemble, settings.aliases)
    raise ManifestLoadError(
        "no ensemble to serve: give a manifest file or a tracking URI and an ensemble name"
    )
