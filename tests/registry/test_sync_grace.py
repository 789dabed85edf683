"""The sync's make-before-break rule (grace), its watch loop surviving filesystem errors, its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import Unreachable
from registry.sync import (
    GATEWAY_CHECK_S,
    Kept,
    PassOutcome,
    SyncResult,
    apply_grace,
    minimum_grace_s,
    watch,
)

GRACE_S = 60.0
T0 = 1_000_000.0


def on_disk_all(model: str, version: int) -> bool:
    return True


def test_a_version_an_alias_left_is_kept_for_the_grace_then_pruned() -> None:
    # Promotion: champion moved m0 from 1 to 2; the previous config listed version 1.
    named, listed = {"m0": {2}}, {"m0": [1]}
    kept, since, why = apply_grace(named, listed, {}, now=T0, grace_s=GRACE_S, on_disk=on_disk_all)
    assert kept == {"m0": {1}}
    assert since == {"m0/1": T0}  # the grace clock starts at the first pass that finds it unnamed
    assert why == [Kept("m0", 1, "60s of grace left")]

    # Later passes: the clock is not restarted, and the version stays until the grace is over.
    listed = {"m0": [1, 2]}
    kept, since, why = apply_grace(named, listed, since, now=T0 + 59, grace_s=GRACE_S, on_disk=on_disk_all)
    assert kept == {"m0": {1}}
    assert since == {"m0/1": T0}
    assert str(why[0]) == "m0/1 (1s of grace left)"
    kept, since, why = apply_grace(named, listed, since, now=T0 + 60, grace_s=GRACE_S, on_disk=on_disk_all)
    assert kept == {}
    assert since == {}
    assert why == []


def test_after_the_grace_it_waits_for_the_new_holder_to_be_available() -> None:
    named, listed = {"m0": {2}}, {"m0": [1, 2]}
    loaded: set[tuple[str, int]] = set()
    asked: list[tuple[str, int]] = []

    def available(model: str, version: int) -> bool:
        asked.append((model, version))
        return (model, version) in loaded

    since = {"m0/1": T0}
    # Within the grace the backend is not even asked.
    apply_grace(named, listed, since, now=T0 + 1, grace_s=GRACE_S, on_disk=on_disk_all, available=available)
    assert asked == []
    kept, since, why = apply_grace(
        named, listed, since, now=T0 + 600, grace_s=GRACE_S, on_disk=on_disk_all, available=available
    )
    assert kept == {"m0": {1}}
    assert since == {"m0/1": T0}
    assert why == [Kept("m0", 1, "waiting for m0/2 to be AVAILABLE")]
    loaded.add(("m0", 2))
    kept, since, _ = apply_grace(
        named, listed, since, now=T0 + 601, grace_s=GRACE_S, on_disk=on_disk_all, available=available
    )
    assert kept == {}
    assert since == {}
    assert asked == [("m0", 2), ("m0", 2)]


def test_a_rollback_within_the_grace_names_the_old_version_again() -> None:
    # Promoted 1 -> 2 (1 kept), then rolled back 2 -> 1 before the grace was over.
    since = {"m0/1": T0}
    kept, since, why = apply_grace(
        {"m0": {1}}, {"m0": [1, 2]}, since, now=T0 + 10, grace_s=GRACE_S, on_disk=on_disk_all
    )
    assert kept == {"m0": {2}}  # now 2 is the one left behind, with a fresh grace
    assert since == {"m0/2": T0 + 10}
    assert why == [Kept("m0", 2, "60s of grace left")]


def test_a_member_that_left_the_ensemble_is_kept_for_the_grace_too() -> None:
    # The new manifest has no m1 at all: nothing names it, nothing has to load first.
    named, listed = {"m0": {2}}, {"m0": [1], "m1": [1]}
    kept, since, _ = apply_grace(named, listed, {}, now=T0, grace_s=GRACE_S, on_disk=on_disk_all)
    assert kept == {"m0": {1}, "m1": {1}}
    kept, since, _ = apply_grace(
        named, listed, since, now=T0 + 61, grace_s=GRACE_S, on_disk=on_disk_all, available=lambda m, v: True
    )
    assert kept == {}


def test_only_versions_still_on_disk_and_listed_are_kept() -> None:
    kept, since, _ = apply_grace(
        {"m0": {3}},
        {"m0": [1, 2]},
        {},
        now=T0,
        grace_s=GRACE_S,
        on_disk=lambda model, version: version != 1,
    )
    assert kept == {"m0": {2}}
    assert since == {"m0/2": T0}
    # A version that was never listed (a stray folder) is not the grace rule's business.
    kept, _, _ = apply_grace({"m0": {3}}, {}, {}, now=T0, grace_s=GRACE_S, on_disk=on_disk_all)
    assert kept == {}


def test_zero_grace_prunes_in_the_same_pass() -> None:
    kept, since, why = apply_grace({"m0": {2}}, {"m0": [1]}, {}, now=T0, grace_s=0.0, on_disk=on_disk_all)
    assert (kept, since, why) == ({}, {}, [])


def test_minimum_grace_adds_up_the_chain_of_polls() -> None:
    # The shipped settings: sync every 10 s, TF Serving rereads its config every 10 s, the gateway
    # polls every 10 s with a 5 s request deadline; 30 s to load the models.
    minimum = minimum_grace_s(
        sync_interval_s=10, backend_config_poll_s=10, load_s=30, gateway_poll_s=10, request_deadline_s=5
    )
    assert minimum == 10 + 10 + 30 + 10 + GATEWAY_CHECK_S + 5
    from registry.defaults import DEFAULT_SYNC_GRACE_S

    assert minimum <= DEFAULT_SYNC_GRACE_S


def test_watch_survives_filesystem_errors_and_reports_each_outcome(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    failed_prune = SyncResult(
        config=config, changed=False, versions={}, labels={}, prune_failed=["m0/1: busy"]
    )
    passes: list[SyncResult | Exception] = [
        PermissionError(13, "Permission denied", str(tmp_path / "m0" / "1")),
        Unreachable("MLflow at http://x is unreachable"),
        failed_prune,
        RuntimeError("a bug\nwith a traceback"),
        SyncResult(config=config, changed=True, versions={}, labels={}),
    ]
    lines: list[str] = []
    outcomes: list[PassOutcome] = []

    def once() -> SyncResult:
        outcome = passes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    watch(
        once,
        interval_s=0.01,
        report=lines.append,
        max_passes=5,
        on_pass=lambda outcome, result: outcomes.append(outcome),
    )
    assert not passes
    assert outcomes == ["filesystem_error", "registry_error", "filesystem_error", "error", "ok"]
    assert lines[0] == (
        f"sync failed on the filesystem, retrying in 0.01s: Permission denied ({tmp_path / 'm0' / '1'})"
    )
    assert lines[1] == "sync failed, retrying in 0.01s: MLflow at http://x is unreachable"
    assert lines[2] == "models.config unchanged; could not prune m0/1: busy"
    assert lines[3] == "sync failed, retrying in 0.01s: RuntimeError: a bug"
    assert lines[4] == "models.config updated"
    assert all("\n" not in line for line in lines)


def test_sync_metrics_count_passes_by_outcome(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from registry.sync_metrics import SyncMetrics

    metrics = SyncMetrics()
    result = SyncResult(
        config=tmp_path / "models.config", changed=False, versions={}, labels={}, kept=[Kept("m0", 1, "x")]
    )
    metrics.record("ok", result)
    metrics.record("filesystem_error", None)
    metrics.record("filesystem_error", None)
    sample = metrics.registry.get_sample_value
    assert sample("ensemble_sync_passes_total", {"outcome": "ok"}) == 1
    assert sample("ensemble_sync_passes_total", {"outcome": "filesystem_error"}) == 2
    assert sample("ensemble_sync_versions_kept") == 1
    assert (sample("ensemble_sync_last_success_timestamp_seconds") or 0) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", "9102"], "error: --metrics-port needs --watch"),
        (["--backend", "localhost"], "error: --backend 'localhost' must be HOST:PORT"),
    ],
)
def test_sync_usage_errors_exit_2_before_any_registry_call(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import build_app

    dead = "http://127.0.0.1:9"  # never asked: the usage is checked first
    result = CliRunner().invoke(
        build_app(), ["sync", "digits", "--model-repo", str(tmp_path / "repo"), "--tracking-uri", dead, *args]
    )
    assert result.exit_code == 2
    assert result.stderr == message + "\n"
