"""Which model versions are served: config, version policies, labels, loading and unloading.

The manager follows TF Serving's model lifecycle. It reads the models (``models.config`` or the
single-model flags), looks for numbered version folders under each base path, and keeps the
versions the policy wants (latest N, specific, all). New versions load in the background. An old
version keeps serving until the versions that replace it have loaded. Versions that leave the
policy, and models that leave the config, are unloaded. States are TF Serving's:
START, LOADING, AVAILABLE, UNLOADING, END.

Where TF Serving would serve nothing, a ``latest`` policy falls back: a version whose load has
failed (and is being retried, or has given up) does not count towards the N latest, so the next
older version on disk is loaded in its place, and unloaded again once the newer one loads.

The manager's state is changed only on the event loop. Loads run in a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from contracts.errors import one_line
from contracts.model_config import ModelConfigError, ModelEntry, read_model_config
from serving.core import ModelRef, TensorInfo, VersionStatus
from serving.errors import InvalidArgument, NotFound
from serving.local_server.versions import scan_versions, wanted_versions
from serving.protos import SignatureDefMap

log = logging.getLogger(__name__)


class Servable(Protocol):
    """A loaded version (``saved_model.SavedModelServable``, or a stand-in in tests)."""

    signature_defs: SignatureDefMap

    def input_signature(self, signature_name: str) -> Mapping[str, TensorInfo]: ...

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> tuple[str, dict[str, np.ndarray]]: ...


Loader = Callable[[Path], Servable]


@dataclass(frozen=True, slots=True)
class LoadRetries:
    """TF Serving's ``--max_num_load_retries`` and ``--load_retry_interval_micros``."""

    max_retries: int = 5
    interval_s: float = 60.0


@dataclass(slots=True)
class VersionSlot:
    """One version of a model and where it is in its lifecycle."""

    version: int
    path: Path
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None
    failures: int = 0
    """Load attempts that failed so far."""
    first_try_done: bool = False
    """The first attempt has ended and what it calls for (a fallback) has been started."""

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code != "OK"

    @property
    def troubled(self) -> bool:
        """Failing to load: retrying, or given up. It does not count towards a ``latest`` policy."""
        return self.failures > 0 and self.state in ("LOADING", "END")

    def status(self) -> VersionStatus:
        return VersionStatus(self.version, self.state, self.error_code, self.error_message)


@dataclass(slots=True)
class ModelSlot:
    """A model of the config with its versions and the labels currently in effect."""

    entry: ModelEntry
    base_path: Path
    versions: dict[int, VersionSlot] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def available(self) -> list[int]:
        return sorted(v for v, slot in self.versions.items() if slot.state == "AVAILABLE")


class ModelManager:
    """Keeps the loaded versions in line with the config and the version folders on disk."""

    def __init__(
        self,
        loader: Loader,
        load_executor: Executor,
        *,
        config_file: Path | None = None,
        single_model: ModelEntry | None = None,
        retries: LoadRetries | None = None,
    ) -> None:
        if (config_file is None) == (single_model is None):
            raise ValueError("give exactly one of config_file and single_model")
        self._retries = retries or LoadRetries(max_retries=0)
        self._loader = loader
        self._load_executor = load_executor
        self._config_file = config_file
        self._entries: list[ModelEntry] = [single_model] if single_model is not None else []
        self._config_text: str | None = None
        self.models: dict[str, ModelSlot] = {}
        self._loads: set[asyncio.Task[None]] = set()
        self._reconcile_lock = asyncio.Lock()
        self._closed = False
        self._label_waits: set[tuple[str, int]] = set()
        self._bad_config_text: str | None = None

    # ----------------------------------------------------------------------------- config + disk

    def read_config(self) -> bool:
        """Re-read the config file; True when it changed. A bad file keeps the current config."""
        if self._config_file is None:
            return False
        try:
            text = self._config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelConfigError(f"{self._config_file}: cannot read: {exc.strerror}") from None
        if text in (self._config_text, self._bad_config_text):
            return False  # unchanged, or the same broken file already reported
        try:
            entries = read_model_config(self._config_file)
        except ModelConfigError:
            self._bad_config_text = text
            raise
        self._config_text, self._bad_config_text = text, None
        self._entries = entries
        log.info("model config %s: %s", self._config_file, ", ".join(e.name for e in entries) or "no models")
        return True

    def _base_path(self, entry: ModelEntry) -> Path:
        path = Path(entry.base_path).expanduser()
        if not path.is_absolute() and self._config_file is not None:
            path = self._config_file.parent / path
        return path.resolve()

    async def reconcile(self) -> None:
        """Bring models and versions in line with the config and the disk (one pass)."""
        async with self._reconcile_lock:
            if self._closed:
                return
            entries = {entry.name: entry for entry in self._entries}
            for name in list(self.models):
                if name not in entries:
                    self._unload_model(name)
            for name, entry in entries.items():
                model = self.models.get(name)
                base_path = self._base_path(entry)
                if model is None or model.base_path != base_path:
                    if model is not None:
                        self._unload_model(name)
                    model = self.models[name] = ModelSlot(entry, base_path)
                model.entry = entry
                found = await asyncio.to_thread(scan_versions, base_path)
                self._reconcile_model(model, found)

    def _reconcile_model(self, model: ModelSlot, found: dict[int, Path]) -> None:
        troubled = [v for v, slot in model.versions.items() if slot.troubled and slot.path == found.get(v)]
        wanted = wanted_versions(model.entry, list(found), troubled)
        for version in sorted(wanted):
            slot = model.versions.get(version)
            if slot is not None and slot.path == found[version] and (slot.state != "END" or slot.failed):
                continue  # loading, loaded, or failed on this very folder: nothing new to try
            slot = model.versions[version] = VersionSlot(version, found[version])
            task = asyncio.create_task(self._load(model, slot), name=f"load {model.entry.name}/{version}")
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)
        # Old versions go only when every wanted version has settled and at least one serves,
        # so a model never drops to zero available versions during a roll-over. A version that
        # keeps failing has settled for this purpose: its retries could take minutes.
        pending = any(
            model.versions[v].state in ("START", "LOADING") and not model.versions[v].troubled
            for v in wanted
            if v in model.versions
        )
        serving_wanted = any(model.versions[v].state == "AVAILABLE" for v in wanted if v in model.versions)
        for version, slot in list(model.versions.items()):
            if version in wanted or slot.state == "END":
                continue
            if slot.state in ("START", "LOADING") or (not pending and (serving_wanted or not wanted)):
                self._unload(model, slot)
        self._apply_labels(model)

    def _apply_labels(self, model: ModelSlot) -> None:
        wanted = model.entry.labels
        for label in list(model.labels):
            if label not in wanted:
                del model.labels[label]
        for label, version in wanted.items():
            slot = model.versions.get(version)
            if slot is not None and slot.state == "AVAILABLE":
                model.labels[label] = version
            elif model.labels.get(label) != version and (label, version) not in self._label_waits:
                # As TF Serving: a label may only move to a version that is already serving.
                self._label_waits.add((label, version))
                log.info(
                    "label %s of %s waits for version %d to be available", label, model.entry.name, version
                )
        for label, version in list(model.labels.items()):
            if model.versions.get(version) is None or model.versions[version].state != "AVAILABLE":
                del model.labels[label]

    async def _load(self, model: ModelSlot, slot: VersionSlot) -> None:
        slot.state = "LOADING"
        name = model.entry.name
        log.info("loading %s version %d from %s", name, slot.version, slot.path)
        loop = asyncio.get_running_loop()
        attempts = 1 + self._retries.max_retries
        for attempt in range(1, attempts + 1):
            try:
                servable = await loop.run_in_executor(self._load_executor, self._loader, slot.path)
                break
            except Exception as exc:
                error = f"Failed to load {name} version {slot.version}: {one_line(exc)}"
                slot.failures += 1
                if attempt == attempts or not self._still_wanted(model, slot):
                    slot.state, slot.error_code, slot.error_message = "END", "UNKNOWN", error
                    log.error("%s", error)
                    break
                # As TF Serving: the version stays LOADING while its load is retried. Unlike TF
                # Serving, an older version starts loading in its place meanwhile.
                log.warning("%s (try %d of %d; retrying)", error, attempt, attempts)
                if not self._closed:
                    await self.reconcile()
                slot.first_try_done = True
                await asyncio.sleep(self._retries.interval_s)
                if not self._still_wanted(model, slot):
                    return  # unloaded while waiting to retry
        if slot.state == "LOADING":
            if not self._still_wanted(model, slot):
                return  # unloaded while loading: drop it
            slot.servable, slot.state = servable, "AVAILABLE"
            log.info("%s version %d is available", name, slot.version)
        if not self._closed:
            await self.reconcile()
        slot.first_try_done = True

    def _still_wanted(self, model: ModelSlot, slot: VersionSlot) -> bool:
        return slot.state == "LOADING" and self.models.get(model.entry.name) is model and not self._closed

    def _unload(self, model: ModelSlot, slot: VersionSlot) -> None:
        if slot.state == "AVAILABLE":
            log.info("unloading %s version %d", model.entry.name, slot.version)
        slot.state = "UNLOADING"
        # Requests already running keep their own reference; the memory goes with the last one.
        slot.servable = None
        slot.state = "END"

    def _unload_model(self, name: str) -> None:
        model = self.models.pop(name)
        for slot in model.versions.values():
            if slot.state != "END":
                self._unload(model, slot)
        log.info("model %s is no longer served", name)

    async def wait_for_first_tries(self) -> None:
        """Wait until every version being loaded has loaded, or failed once and had an older
        version start in its place; retries go on in the background."""
        while any(
            slot.state in ("START", "LOADING") and not slot.first_try_done
            for model in self.models.values()
            for slot in model.versions.values()
        ):
            await asyncio.sleep(0.05)

    def unservable(self) -> dict[str, str]:
        """Models of the config with no AVAILABLE version, and why (for health and the log)."""
        problems: dict[str, str] = {}
        for name, model in self.models.items():
            if model.available():
                continue
            states = [
                f"version {v}: {s.state}{' (' + s.error_message + ')' if s.error_message else ''}"
                for v, s in sorted(model.versions.items())
            ]
            problems[name] = "; ".join(states) or f"no version found under {model.base_path}"
        return problems

    async def wait_for_loads(self) -> None:
        """Wait until no load is in progress (including loads that finishing loads start)."""
        while self._loads:
            await asyncio.gather(*list(self._loads), return_exceptions=True)

    async def poll(self, config_wait_s: float, file_system_wait_s: float) -> None:
        """Re-read the config and re-scan the folders at their intervals, until cancelled."""
        waits = [w for w in (config_wait_s, file_system_wait_s) if w > 0]
        if not waits:
            return
        tick = min(waits)
        since_config = since_disk = 0.0
        while True:
            await asyncio.sleep(tick)
            since_config += tick
            since_disk += tick
            changed = False
            if config_wait_s > 0 and since_config >= config_wait_s:
                since_config = 0.0
                try:
                    changed = self.read_config()
                except ModelConfigError as exc:
                    log.error("%s (keeping the current config)", exc)
            if changed or (file_system_wait_s > 0 and since_disk >= file_system_wait_s):
                since_disk = 0.0
                await self.reconcile()

    def close(self) -> None:
        """Stop loading; loaded versions are dropped."""
        self._closed = True
        for task in self._loads:
            task.cancel()
        for name in list(self.models):
            self._unload_model(name)

    # ----------------------------------------------------------------------------- lookups

    def resolve(self, ref: ModelRef) -> tuple[int, Servable]:
        """The version and servable a request addresses; NotFound / InvalidArgument as TF Serving."""
        model = self.models.get(ref.name)
        if ref.label is not None:
            if model is None or ref.label not in model.labels:
                if model is None:
                    raise NotFound(f"Servable not found for request: Latest({ref.name})")
                raise InvalidArgument(f"Unrecognized servable version label: {ref.label}")
            version: int | None = model.labels[ref.label]
        else:
            version = ref.version
        if model is not None:
            if version is None:
                available = model.available()
                version = available[-1] if available else None
            slot = model.versions.get(version) if version is not None else None
            if slot is not None and slot.state == "AVAILABLE" and slot.servable is not None:
                return slot.version, slot.servable
        if ref.version is not None or ref.label is not None:
            raise NotFound(f"Servable not found for request: Specific({ref.name}, {version})")
        raise NotFound(f"Servable not found for request: Latest({ref.name})")

    def status(self, ref: ModelRef) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: every version of the model, or the one addressed."""
        model = self.models.get(ref.name)
        if model is None or not model.versions:
            raise NotFound(f"Could not find any versions of model {ref.name}")
        version = ref.version
        if ref.label is not None:
            if ref.label not in model.labels:
                raise InvalidArgument(f"Unrecognized servable version label: {ref.label}")
            version = model.labels[ref.label]
        if version is None:
            return [model.versions[v].status() for v in sorted(model.versions)]
        if version not in model.versions:
            raise NotFound(f"Could not find version {version} of model {ref.name}")
        return [model.versions[version].status()]
