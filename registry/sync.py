"""Syncing aliases to a TF Serving model repository: ``<repo>/<member>/<version>/`` plus ``models.config``.

One pass: resolve each alias to its manifest, download the member versions they need (each into a
hidden folder, then renamed into place), write ``models.config`` (a specific version policy and one
version label per alias) to a temporary file and rename it over the old one, and only then prune
version folders that the config no longer lists. A pass that changes nothing writes nothing. The
decisions are pure (labels and entries in :mod:`registry.sync_plan`, the grace rule here);
:mod:`registry.sync_files` owns the files (state, downloads, pruning).

Make before break (the grace rule): a version that an alias named stays on disk and listed in
``models.config`` for ``grace_s`` after the first pass that found no alias naming it, and, when a
backend is given to ask, until the versions the aliases name now are AVAILABLE there. Everyone
downstream polls on their own schedule (the backend rereads the config, loads the new version, the
gateway sees the alias move and switches once the new members are AVAILABLE, its in-flight
requests finish on the old ones), so the old version must outlive that whole chain of polls:
:func:`minimum_grace_s` adds it up. Rollbacks and ``staged`` labels follow the same rule.

Labels and loading: TF Serving refuses a label that points at a version it has not loaded yet.
The default (``immediate``) writes labels in the same pass as the versions, and expects TF Serving
to run with ``--allow_version_labels_for_unavailable_models``. With ``staged``, a label only moves
to a version that the previous ``models.config`` already listed; until then it keeps pointing at
its old version (kept on disk), and the next pass (``--watch``) moves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from contracts.errors import one_line
from contracts.manifest import Manifest
from contracts.model_config import (
    ModelConfigError,
    ModelEntry,
    dumps_model_config,
    read_model_config,
    write_model_config,
)
from registry.aliases import check_alias
from registry.defaults import DEFAULT_SYNC_GRACE_S
from registry.errors import InvalidArgument, NotFound, RegistryError
from registry.promotion import check_members
from registry.resolve import load_manifest, version_for_alias
from registry.sync_files import (
    SyncState,
    download_version,
    has_version,
    prune_versions,
    read_state,
    write_state,
)
from registry.sync_plan import LabelPolicy, plan_entries, plan_labels

if TYPE_CHECKING:
    from mlflow import MlflowClient


CONFIG_FILE = "models.config"

GATEWAY_CHECK_S = 2.0
"""What a gateway's poll itself may take: the registry call and the members' status check (1 s)."""

AvailableFn = Callable[[str, int], bool]
"""Whether a backend reports ``model`` version ``version`` AVAILABLE."""


def minimum_grace_s(
    *,
    sync_interval_s: float,
    backend_config_poll_s: float,
    load_s: float,
    gateway_poll_s: float,
    request_deadline_s: float,
) -> float:
    """The shortest grace that keeps an old version until nobody can still be calling it.

    From the alias move: the slowest sync sidecar sees it within ``sync_interval_s`` (the others'
    grace clocks started up to that much earlier); its backend rereads ``models.config`` within
    ``backend_config_poll_s`` and loads the new version in ``load_s``; a gateway's next poll
    (``gateway_poll_s`` plus :data:`GATEWAY_CHECK_S`) finds it AVAILABLE and switches; requests it
    sent on the old manifest finish within ``request_deadline_s``.
    """
    return (
        sync_interval_s
        + backend_config_poll_s
        + load_s
        + gateway_poll_s
        + GATEWAY_CHECK_S
        + request_deadline_s
    )


@dataclass(slots=True)
class SyncResult:
    """What one pass did."""

    config: Path
    changed: bool
    versions: dict[str, list[int]]
    labels: dict[str, dict[str, int]]
    downloaded: list[tuple[str, int]] = field(default_factory=list)
    pruned: list[tuple[str, int]] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    """``model@label`` entries a staged pass could not move yet."""
    skipped: list[str] = field(default_factory=list)
    """Aliases that point at nothing yet: optional ones (all but the first, or all with ``unset_ok``)."""
    kept: list[Kept] = field(default_factory=list)
    """Versions no alias names any more, kept by the grace rule."""
    prune_failed: list[str] = field(default_factory=list)
    """``model/version: why`` for folders that could not be deleted (tried again next pass)."""

    def summary(self) -> str:
        parts = [f"{CONFIG_FILE} {'updated' if self.changed else 'unchanged'}"]
        if self.downloaded:
            parts.append("downloaded " + ", ".join(f"{m}/{v}" for m, v in self.downloaded))
        if self.kept:
            parts.append("kept while the move settles: " + ", ".join(str(k) for k in self.kept))
        if self.pruned:
            parts.append("pruned " + ", ".join(f"{m}/{v}" for m, v in self.pruned))
        if self.prune_failed:
            parts.append("could not prune " + ", ".join(self.prune_failed))
        if self.deferred:
            parts.append("labels waiting for a loaded version: " + ", ".join(self.deferred))
        if self.skipped:
            parts.append("aliases not set yet, skipped: " + ", ".join(self.skipped))
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Kept:
    """A version kept although no alias names it, and why."""

    model: str
    version: int
    why: str

    def __str__(self) -> str:
        return f"{self.model}/{self.version} ({self.why})"


def apply_grace(
    named: Mapping[str, set[int]],
    listed: Mapping[str, Sequence[int]],
    unnamed_since: Mapping[str, float],
    *,
    now: float,
    grace_s: float,
    on_disk: Callable[[str, int], bool],
    available: AvailableFn | None = None,
) -> tuple[dict[str, set[int]], dict[str, float], list[Kept]]:
    """The grace rule: which versions that no alias names stay listed, and since when they are unnamed.

    ``named``: model -> versions the aliases (and labels) name now. ``listed``: model -> versions
    the previous ``models.config`` listed. ``unnamed_since``: ``"model/version"`` -> when a pass
    first found it unnamed (wall-clock seconds; the state survives restarts). A listed, unnamed
    version still on disk is kept while its grace lasts, then until every version ``named`` for
    its model is AVAILABLE (when ``available`` can tell). Returns the kept versions per model, the
    new ``unnamed_since`` and why each is kept.
    """
    kept: dict[str, set[int]] = {}
    since_now: dict[str, float] = {}
    why: list[Kept] = []
    for model, versions in sorted(listed.items()):
        holders = named.get(model, set())
        for version in sorted(set(versions) - holders):
            if not on_disk(model, version):
                continue
            key = f"{model}/{version}"
            since = unnamed_since.get(key, now)
            left = grace_s - (now - since)
            if left > 0:
                reason = f"{left:.0f}s of grace left"
            else:
                loading = [v for v in sorted(holders) if available is not None and not available(model, v)]
                if not loading:
                    continue
                reason = "waiting for " + ", ".join(f"{model}/{v}" for v in loading) + " to be AVAILABLE"
            kept.setdefault(model, set()).add(version)
            since_now[key] = since
            why.append(Kept(model, version, reason))
    return kept, since_now, why


def sync_once(
    client: MlflowClient,
    name: str,
    aliases: Sequence[str],
    repo: Path,
    *,
    base_path: str | None = None,
    label_policy: LabelPolicy = "immediate",
    grace_s: float = DEFAULT_SYNC_GRACE_S,
    available: AvailableFn | None = None,
    now: float | None = None,
    unset_ok: bool = False,
) -> SyncResult:
    """One sync pass of ``name``'s ``aliases`` into ``repo``; see the module docstring.

    ``available`` asks the backend this repository feeds (the CLI builds it from serving's
    ``backend_availability``); ``now`` is the wall-clock time of the pass (tests set it). The
    first alias must be set unless ``unset_ok`` (a repository for a challenger alone): with no
    alias set, ``models.config`` lists no model until one is.
    """
    repo = _checked_repo(aliases, repo)
    manifests, skipped = _resolve_aliases(client, name, aliases, first_required=not unset_ok)
    config_path = repo / CONFIG_FILE
    try:
        old_entries = read_model_config(config_path) if config_path.exists() else []
    except ModelConfigError as exc:
        raise InvalidArgument(f"cannot update {config_path}: {exc}") from None
    previous = {entry.name: entry for entry in old_entries}
    plan = plan_labels(manifests, previous, label_policy)
    result = SyncResult(
        config=config_path,
        changed=False,
        versions=plan.versions,
        labels=plan.labels,
        deferred=plan.deferred,
        skipped=skipped,
    )

    state = read_state(repo, name)
    for model, versions in result.versions.items():
        for version in versions:
            if download_version(client, repo, model, version, state):
                result.downloaded.append((model, version))
    _keep_in_grace(
        result,
        previous,
        state,
        now=time.time() if now is None else now,
        grace_s=grace_s,
        on_disk=lambda model, version: has_version(repo, model, version),
        available=available,
    )

    managed = state.models | set(result.versions)
    entries = plan_entries(previous, managed, result.versions, result.labels, repo, base_path)
    try:
        unchanged = config_path.exists() and dumps_model_config(entries) == dumps_model_config(old_entries)
        if not unchanged:
            # Atomic (temporary file, then rename): TF Serving polls the file and never reads half of it.
            write_model_config(config_path, entries)
            result.changed = True
    except ModelConfigError as exc:
        raise InvalidArgument(f"cannot write {config_path}: {exc}") from None
    state.forget_unlisted(result.versions)
    write_state(repo, name, state)

    # Pruned only now, with the new config in place: nothing still listed loses its folder.
    result.pruned, result.prune_failed = prune_versions(repo, managed, result.versions)
    return result


def _checked_repo(aliases: Sequence[str], repo: Path) -> Path:
    """The repository as an absolute, existing directory, once the aliases are known to be valid."""
    if not aliases:
        raise InvalidArgument("sync needs at least one --alias")
    for alias in aliases:
        check_alias(alias)
    repo = repo.resolve()
    if repo.exists() and not repo.is_dir():
        raise InvalidArgument(f"{repo} is not a directory")
    repo.mkdir(parents=True, exist_ok=True)
    return repo


def _resolve_aliases(
    client: MlflowClient, name: str, aliases: Sequence[str], *, first_required: bool = True
) -> tuple[dict[str, Manifest], list[str]]:
    """Each set alias's checked manifest, and the optional aliases that point at nothing yet."""
    manifests: dict[str, Manifest] = {}
    skipped: list[str] = []
    for position, alias in enumerate(aliases):
        try:
            version = version_for_alias(client, name, alias)
        except NotFound:
            # The first alias is the one served by default and must exist; later ones (a
            # challenger on a fresh install) may not be set yet and join on a later pass.
            if position == 0 and first_required:
                raise
            skipped.append(alias)
            continue
        manifest = load_manifest(client, name, version)
        check_members(client, manifest)
        manifests[alias] = manifest
    return manifests, skipped


def _keep_in_grace(
    result: SyncResult,
    previous: Mapping[str, ModelEntry],
    state: SyncState,
    *,
    now: float,
    grace_s: float,
    on_disk: Callable[[str, int], bool],
    available: AvailableFn | None,
) -> None:
    """Add to ``result`` the versions the grace rule keeps listed, and update their clocks in ``state``."""
    named = {model: set(versions) for model, versions in result.versions.items()}
    listed = {
        model: entry.versions or []
        for model, entry in previous.items()
        if model in state.models or model in named
    }
    kept, state.unnamed_since, result.kept = apply_grace(
        named, listed, state.unnamed_since, now=now, grace_s=grace_s, on_disk=on_disk, available=available
    )
    for model, retained in kept.items():
        result.versions[model] = sorted(named.get(model, set()) | retained)
        result.labels.setdefault(model, {})


PassOutcome = Literal["ok", "registry_error", "filesystem_error", "error"]


def watch(
    pass_once: Callable[[], SyncResult],
    *,
    interval_s: float,
    report: Callable[[str], None],
    max_passes: int | None = None,
    on_pass: Callable[[PassOutcome, SyncResult | None], None] | None = None,
) -> None:
    """Run ``pass_once`` every ``interval_s``; a failed pass is reported and retried, never fatal.

    ``on_pass`` hears each pass's outcome (for metrics): the registry failing, the filesystem
    failing (a full disk, a folder that cannot be removed, ...), or anything else.
    """
    passes = 0
    while max_passes is None or passes < max_passes:
        started = time.monotonic()
        outcome: PassOutcome = "ok"
        result: SyncResult | None = None
        try:
            result = pass_once()
            if result.changed or result.downloaded or result.pruned or result.deferred or result.prune_failed:
                report(result.summary())
            if result.prune_failed:
                outcome = "filesystem_error"
        except RegistryError as exc:
            outcome = "registry_error"
            report(f"sync failed, retrying in {interval_s:g}s: {exc}")
        except OSError as exc:
            outcome = "filesystem_error"
            report(f"sync failed on the filesystem, retrying in {interval_s:g}s: {_os_error(exc)}")
        except Exception as exc:  # a sidecar that dies leaves its backend stale: keep trying, loudly
            outcome = "error"
            report(f"sync failed, retrying in {interval_s:g}s: {type(exc).__name__}: {one_line(exc)}")
        if on_pass is not None:
            on_pass(outcome, result)
        passes += 1
        if max_passes is not None and passes >= max_passes:
            break
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def _os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
