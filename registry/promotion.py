"""Gated promotion and rollback of an ensemble alias.

The offline gate compares one held-out metric of the candidate manifest with the current holder's,
on the same test data (equal ``provenance.test_fingerprint``). Lower is better, except for
accuracy-like metrics. With live evidence from the gateway (``registry.online_gate``) the online
gate must pass too. ``force`` overrides a refusal, and the move records that it was forced and why.

Each gate's decision is recorded on the candidate version, whether it passed or not, as the tags
``gate.<alias>.offline`` and ``gate.<alias>.online`` (JSON: passed, reason, when, who, forced; the
online one also the gateway, the thresholds and the summary it read).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contracts import tags as tag
from contracts.manifest import Manifest
from registry.aliases import (
    AliasMove,
    check_alias,
    current_holder,
    current_user,
    move_alias,
    previous_holder,
)
from registry.client import missing_as_not_found, translated
from registry.errors import PromotionRefused
from registry.online_gate import Evidence, OnlineThresholds, OnlineVerdict, online_gate
from registry.resolve import load_manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_METRIC = "test_nll"
HIGHER_IS_BETTER = ("accuracy", "r2", "auc")


def higher_is_better(metric: str) -> bool:
    """Accuracy (and r2, auc) grow with quality; losses and errors shrink."""
    return metric.lower().endswith(HIGHER_IS_BETTER)


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The gate's answer: whether the candidate may take the alias, and a one-line reason."""

    passed: bool
    reason: str


def gate(candidate: Manifest, holder: Manifest, metric: str) -> GateVerdict:
    """Compare ``candidate`` with the current ``holder`` on ``metric`` and the same test data."""
    theirs, ours = holder.provenance.test_fingerprint, candidate.provenance.test_fingerprint
    if not ours or not theirs:
        return GateVerdict(
            False, "a manifest has no test-data fingerprint, so the metrics are not comparable"
        )
    if ours != theirs:
        return GateVerdict(
            False,
            f"different test data (test fingerprint {ours[:12]} vs {theirs[:12]} "
            f"of version {holder.version})",
        )
    if metric not in candidate.metrics or metric not in holder.metrics:
        missing = candidate.version if metric not in candidate.metrics else holder.version
        return GateVerdict(False, f"version {missing} has no metric {metric!r}")
    new, old = candidate.metrics[metric], holder.metrics[metric]
    better = new >= old if higher_is_better(metric) else new <= old
    comparison = f"{metric} {new:.6g} vs {old:.6g} of version {holder.version}"
    if better:
        return GateVerdict(True, f"{comparison}: at least as good")
    return GateVerdict(False, f"{comparison}: worse")


def check_members(client: MlflowClient, manifest: Manifest) -> None:
    """NotFound unless every member version the manifest references is registered."""
    for member in manifest.members:
        missing = (
            f"{manifest.name} version {manifest.version} references {member.name} "
            f"version {member.version}, which is not registered"
        )
        with translated(f"member {member.name} version {member.version}"), missing_as_not_found(missing):
            client.get_model_version(member.name, str(member.version))


@dataclass(frozen=True, slots=True)
class OnlineCheck:
    """The live evidence a promotion must also pass, and the thresholds it is held to."""

    evidence: Evidence
    thresholds: OnlineThresholds


@dataclass(frozen=True, slots=True)
class PromotionResult:
    """What ``promote`` did: the move (None when the alias already pointed there) and the verdicts."""

    move: AliasMove | None
    verdict: GateVerdict
    online: OnlineVerdict | None = None


def promote(
    client: MlflowClient,
    name: str,
    version: int,
    alias: str,
    *,
    metric: str = DEFAULT_METRIC,
    force: bool = False,
    reason: str = "",
    online: OnlineCheck | None = None,
) -> PromotionResult:
    """Move ``name@alias`` to ``version`` if the gates pass (or ``force``); PromotionRefused otherwise.

    ``online`` adds the online gate on the gateway's live evidence to the offline one.
    """
    check_alias(alias)
    candidate = load_manifest(client, name, version)
    check_members(client, candidate)
    holder_version = current_holder(client, name, alias)
    if holder_version == version:
        return PromotionResult(None, GateVerdict(True, f"{name}@{alias} already points at version {version}"))
    if holder_version is None:
        verdict = GateVerdict(True, f"{name}@{alias} had no holder")
    else:
        verdict = gate(candidate, load_manifest(client, name, holder_version), metric)
    online_verdict = None
    if online is not None:
        online_verdict = online_gate(
            online.evidence.summary,
            alias=alias,
            candidate=version,
            holder=holder_version,
            thresholds=online.thresholds,
        )
    record_gates(client, name, version, alias, verdict, online, online_verdict, metric=metric, forced=force)
    refusals = [verdict.reason] if not verdict.passed else []
    if online_verdict is not None and not online_verdict.passed:
        refusals.append(f"online: {online_verdict.reason}")
    if refusals and not force:
        raise PromotionRefused(
            f"refused to move {name}@{alias} to version {version}: {'; '.join(refusals)} (--force overrides)"
        )
    passed = [verdict.reason] + ([online_verdict.reason] if online_verdict is not None else [])
    why = reason or "; ".join(passed)
    if refusals:
        why = f"forced over the gate ({'; '.join(refusals)})" + (f": {reason}" if reason else "")
    move = move_alias(client, candidate, alias, action="promote", why=why, forced=bool(refusals))
    return PromotionResult(move, verdict, online_verdict)


def record_gates(
    client: MlflowClient,
    name: str,
    version: int,
    alias: str,
    offline: GateVerdict,
    online: OnlineCheck | None,
    online_verdict: OnlineVerdict | None,
    *,
    metric: str,
    forced: bool,
) -> None:
    """Record each gate's decision and its evidence as tags on version ``version`` of ``name``."""
    common: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "who": current_user(),
        "forced": forced,
    }
    tags = {
        f"{tag.GATE_PREFIX}{alias}.offline": {
            **common,
            "passed": offline.passed,
            "reason": offline.reason,
            "metric": metric,
        }
    }
    if online is not None and online_verdict is not None:
        tags[f"{tag.GATE_PREFIX}{alias}.online"] = {
            **common,
            "passed": online_verdict.passed,
            "reason": online_verdict.reason,
            "gateway": online.evidence.gateway,
            "thresholds": online.thresholds.model_dump(),
            "evidence": online.evidence.document,
        }
    with translated(f"recording the gates on {name} version {version}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, json.dumps(value, sort_keys=True))


@dataclass(frozen=True, slots=True)
class GateRecord:
    """A recorded gate decision, as ``registry show NAME/VERSION`` lists it."""

    alias: str
    gate: str
    passed: bool
    forced: bool
    reason: str
    when: str
    who: str
    detail: dict[str, Any]


def gate_records(client: MlflowClient, name: str, version: int) -> list[GateRecord]:
    """The gate decisions recorded on a version, by alias, offline before online."""
    with translated(f"{name} version {version}"):
        tags = dict(client.get_model_version(name, str(version)).tags or {})
    records = []
    for key, value in tags.items():
        if not key.startswith(tag.GATE_PREFIX):
            continue
        alias, _, which = key[len(tag.GATE_PREFIX) :].rpartition(".")
        try:
            data = json.loads(value)
        except ValueError:
            continue  # a hand-edited tag must not break reading the rest
        records.append(
            GateRecord(
                alias=alias,
                gate=which,
                passed=bool(data.get("passed")),
                forced=bool(data.get("forced")),
                reason=str(data.get("reason", "")),
                when=str(data.get("when", "")),
                who=str(data.get("who", "")),
                detail=data,
            )
        )
    return sorted(records, key=lambda r: (r.alias, r.gate != "offline"))


def rollback(client: MlflowClient, name: str, alias: str, *, reason: str = "") -> AliasMove:
    """Move ``name@alias`` back to the version it held before its last move."""
    check_alias(alias)
    target = previous_holder(client, name, alias)
    manifest = load_manifest(client, name, target)
    check_members(client, manifest)
    current = current_holder(client, name, alias)
    return move_alias(
        client, manifest, alias, action="rollback", why=reason or f"rolled back from version {current}"
    )
