"""Gated promotion and rollback of an ensemble alias.

The gate compares one held-out metric of the candidate manifest with the current holder's, on the
same test data (equal ``provenance.test_fingerprint``). Lower is better, except for accuracy-like
metrics. ``force`` overrides a refusal, and the move records that it was forced and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.aliases import AliasMove, check_alias, current_holder, move_alias, previous_holder
from registry.client import translated
from registry.errors import NotFound, PromotionRefused
from registry.manifest import Manifest
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
    from mlflow.exceptions import MlflowException

    for member in manifest.members:
        with translated(f"member {member.name} version {member.version}"):
            try:
                client.get_model_version(member.name, str(member.version))
            except MlflowException as exc:
                if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                    raise NotFound(
                        f"{manifest.name} version {manifest.version} references {member.name} "
                        f"version {member.version}, which is not registered"
                    ) from None
                raise


@dataclass(frozen=True, slots=True)
class PromotionResult:
    """What ``promote`` did: the move (None when the alias already pointed there) and the verdict."""

    move: AliasMove | None
    verdict: GateVerdict


def promote(
    client: MlflowClient,
    name: str,
    version: int,
    alias: str,
    *,
    metric: str = DEFAULT_METRIC,
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    """Move ``name@alias`` to ``version`` if the gate passes (or ``force``); PromotionRefused otherwise."""
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
    if not verdict.passed and not force:
        raise PromotionRefused(
            f"refused to move {name}@{alias} to version {version}: {verdict.reason} (--force overrides)"
        )
    why = reason or verdict.reason
    if force and not verdict.passed:
        why = f"forced over the gate ({verdict.reason})" + (f": {reason}" if reason else "")
    move = move_alias(
        client, candidate, alias, action="promote", why=why, forced=force and not verdict.passed
    )
    return PromotionResult(move, verdict)


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
