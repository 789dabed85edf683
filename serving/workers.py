"""``ensemble serve --workers N``: a supervisor process and the N gateway workers it keeps running.

Each worker is a whole gateway (``serving.app.serve``): its own event loop, member channels,
batcher and manifest watch, so a manifest change is picked up by every worker on its own. The
workers bind the same REST and gRPC ports with SO_REUSEPORT and the kernel spreads new connections
over them. Their metrics go to a fresh ``PROMETHEUS_MULTIPROC_DIR`` that the supervisor creates and
removes, so a scrape of any worker answers the sum over all of them.

The supervisor serves nothing itself. On SIGTERM or SIGINT it forwards SIGTERM to every worker,
and each drains (in-flight requests finish, up to ``drain_timeout_s``); it exits once they all
have. A worker that fails while starting (a bad manifest, a port taken) stops them all: the error
is the worker's, one line, exit 1. A worker that dies after it served is restarted, unless workers
keep dying (more than :data:`MAX_RESTARTS` within :data:`RESTART_WINDOW_S`): then everything stops
with exit 1, and the orchestrator's restart policy takes over.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from types import FrameType
from typing import Any

from serving.lifecycle import LOG_FORMAT, StartupError, die_with_parent
from serving.metrics import MULTIPROCESS_DIR_ENV
from serving.settings import GatewaySettings

log = logging.getLogger("serving.workers")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
"""More restarts than MAX_RESTARTS within this window is a crash loop: the supervisor gives up."""
KILL_AFTER_S = 10.0
"""How long past ``drain_timeout_s`` a worker may take to exit before it is killed."""
_POLL_S = 0.2

_Report = tuple[str, int, str]
"""What a worker tells its supervisor: ("serving" | "failed", worker index, detail)."""


class WorkersFailed(StartupError):
    """A worker could not start, or workers keep dying; the message is one line for the user."""


def supervise(settings: GatewaySettings) -> None:
    """Run ``settings.workers`` gateway workers until SIGTERM or SIGINT; WorkersFailed if they cannot run."""
    with tempfile.TemporaryDirectory(prefix="ensemble-metrics-") as metrics_dir:
        # Read by prometheus-client when a worker imports it: set before any worker is spawned.
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
        try:
            _Supervisor(settings, metrics_dir).run()
        finally:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)


@dataclass
class _Worker:
    index: int
    process: SpawnProcess
    serving: bool = False


@dataclass
class _Supervisor:
    settings: GatewaySettings
    metrics_dir: str
    context: multiprocessing.context.SpawnContext = field(
        default_factory=lambda: multiprocessing.get_context("spawn")
    )

    def __post_init__(self) -> None:
        self.reports: Queue[_Report] = self.context.Queue()
        self.workers: dict[int, _Worker] = {}
        self.restarts: list[float] = []
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.settings.workers):
                self._spawn(index)
            self._supervise()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.reports.close()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping = True

    def _spawn(self, index: int) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(self.settings.sources(), index, self.reports),
            name=f"gateway-worker-{index}",
        )
        process.start()
        self.workers[index] = _Worker(index, process)

    def _supervise(self) -> None:
        all_serving = False
        while not self.stopping:
            self._read_reports()
            if not all_serving and all(w.serving for w in self.workers.values()):
                all_serving = True
                log.info(
                    "all %d workers are serving on REST %s:%d and gRPC %s:%d",
                    len(self.workers),
                    self.settings.rest_host,
                    self.settings.rest_port,
                    self.settings.grpc_host,
                    self.settings.grpc_port,
                )
            sentinels = [w.process.sentinel for w in self.workers.values()]
            wait(sentinels, timeout=_POLL_S)
            for worker in list(self.workers.values()):
                if not worker.process.is_alive() and not self.stopping:
                    self._worker_died(worker)

    def _read_reports(self) -> None:
        while True:
            try:
                kind, index, detail = self.reports.get_nowait()
            except queue.Empty:
                return
            if kind == "failed":
                raise WorkersFailed(detail)
            if index in self.workers:
                self.workers[index].serving = True

    def _worker_died(self, worker: _Worker) -> None:
        worker.process.join()
        self._read_reports()  # a startup failure says why before the worker exits
        code = worker.process.exitcode
        pid = worker.process.pid
        self._forget(pid)
        if not worker.serving:
            raise WorkersFailed(f"gateway worker {worker.index} exited with code {code} while starting")
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            raise WorkersFailed(
                f"gateway workers died {len(self.restarts)} times within {RESTART_WINDOW_S:.0f}s "
                f"(last: worker {worker.index}, exit code {code}); stopping"
            )
        log.warning(
            "gateway worker %d (pid %s) died with exit code %s: restarting it", worker.index, pid, code
        )
        self._spawn(worker.index)

    def _forget(self, pid: int | None) -> None:
        """Drop a dead worker's live gauges (in-flight requests, its share of the requests)."""
        if pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), wait for all, kill any that outstay the grace."""
        alive = [w.process for w in self.workers.values() if w.process.is_alive()]
        for process in alive:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + KILL_AFTER_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("gateway worker pid %s did not exit in time: killing it", process.pid)
                process.kill()
                process.join()
        failed = [w for w in self.workers.values() if w.serving and w.process.exitcode not in (0, None)]
        for worker in self.workers.values():
            self._forget(worker.process.pid)
        if failed and self.stopping:
            codes = ", ".join(f"worker {w.index}: {w.process.exitcode}" for w in failed)
            raise WorkersFailed(f"gateway workers did not stop cleanly ({codes})")
        log.info("all workers stopped")


def _worker_main(sources: tuple[Path | None, dict[str, Any]], index: int, reports: Queue[_Report]) -> None:
    """One worker process: a whole gateway on the shared ports, reporting to the supervisor."""
    from serving.app import run_loop, serve
    from serving.manifest_source import ManifestLoadError

    die_with_parent()  # a SIGKILLed supervisor takes its workers down: they drain as on SIGTERM
    config_file, overrides = sources
    settings = GatewaySettings.load(config_file, **overrides)

    logging.basicConfig(level=settings.log_level.upper(), format=f"[worker {index}] {LOG_FORMAT}")
    # SIGINT from a terminal reaches the whole process group: the worker drains on it as on SIGTERM
    # once serving; before that the default handler would print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_loop(serve(settings, on_serving=lambda: reports.put(("serving", index, str(os.getpid())))))
    except (ManifestLoadError, StartupError, OSError) as exc:
        reports.put(("failed", index, str(exc)))
        reports.close()
        reports.join_thread()
        raise SystemExit(1) from None
