"""Alias moves and their history: every move is a tag on the ensemble's registered model.

A move is recorded as the tag ``alias_move.<alias>.<seq>.<nonce>`` holding JSON (who, when, from,
to, why, action, forced); the nonce keeps two moves made at the same moment, which count the same
``seq``, from overwriting each other. Replaying the moves of one alias gives its holder stack,
which is what ``rollback`` walks back along. The members' registered models carry the same alias, so the
MLflow UI shows which member versions each alias serves.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import re
import uuid
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from contracts import tags as tag
from contracts.manifest import Manifest
from registry.client import translated
from registry.errors import InvalidArgument, NotFound, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIAS_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""TF Serving version labels match [a-zA-Z0-9_]+; MLflow refuses aliases like 'v3' or 'latest'."""

Action = Literal["register", "promote", "rollback"]


class AliasMove(BaseModel):
    """One recorded alias move."""

    model_config = ConfigDict(frozen=True)

    alias: str
    from_version: int | None
    to_version: int
    action: Action
    who: str
    when: str
    why: str = ""
    forced: bool = False
    seq: int = 0


def check_alias(alias: str) -> str:
    """Return ``alias`` if TF Serving and MLflow both accept it as a label, else InvalidArgument."""
    if not ALIAS_PATTERN.match(alias) or re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        raise InvalidArgument(
            f"alias {alias!r} is not usable: letters, digits and '_', not starting with a digit, "
            "not 'latest' or 'v<N>'"
        )
    return alias


def current_user() -> str:
    """Who a move is recorded as: ``$ENSEMBLE_USER``, else the login name."""
    try:
        return os.environ.get("ENSEMBLE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def history(client: MlflowClient, name: str, alias: str | None = None) -> list[AliasMove]:
    """Recorded moves of ``name`` (of one alias if given), oldest first."""
    with translated(f"ensemble {name!r}"):
        model = client.get_registered_model(name)
    moves = []
    for key, value in (model.tags or {}).items():
        if not key.startswith(tag.ALIAS_MOVE_PREFIX):
            continue
        try:
            move = AliasMove.model_validate_json(value)
        except ValueError:
            continue  # a hand-edited tag must not break reading the rest
        if alias is None or move.alias == alias:
            moves.append(move)
    return sorted(moves, key=lambda move: (move.when, move.seq))


def holder_stack(moves: list[AliasMove]) -> list[int]:
    """The versions an alias held, oldest first, with rolled-back holders popped."""
    stack: list[int] = []
    for move in moves:
        if move.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != move.to_version:
                stack.append(move.to_version)
        else:
            stack.append(move.to_version)
    return stack


def current_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points at, or None if it points nowhere."""
    with translated(f"ensemble {name!r}"):
        model = client.get_registered_model(name)
    aliases = dict(model.aliases or {})
    return int(aliases[alias]) if alias in aliases else None


def move_alias(
    client: MlflowClient,
    manifest: Manifest,
    alias: str,
    *,
    action: Action,
    why: str = "",
    forced: bool = False,
) -> AliasMove:
    """Point ``alias`` of ``manifest.name`` at ``manifest.version`` (and its members), and record it."""
    check_alias(alias)
    if manifest.version is None:
        raise InvalidArgument(f"manifest {manifest.name!r} is not registered")
    name = manifest.name
    previous = current_holder(client, name, alias)
    seq = len(history(client, name, alias)) + 1
    move = AliasMove(
        alias=alias,
        from_version=previous,
        to_version=manifest.version,
        action=action,
        who=current_user(),
        when=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        why=why,
        forced=forced,
        seq=seq,
    )
    with translated(f"moving {name}@{alias}"):
        for member in manifest.members:
            client.set_registered_model_alias(member.name, alias, str(member.version))
        for stale in _members_left_behind(client, manifest, alias, previous):
            client.delete_registered_model_alias(stale, alias)
        client.set_registered_model_alias(name, alias, str(manifest.version))
        key = f"{tag.ALIAS_MOVE_PREFIX}{alias}.{seq:05d}.{uuid.uuid4().hex[:8]}"
        client.set_registered_model_tag(name, key, move.model_dump_json())
    return move


def _members_left_behind(
    client: MlflowClient, manifest: Manifest, alias: str, previous: int | None
) -> list[str]:
    """Members of the previous holder that the new one lacks: their alias would point at nothing served."""
    from registry.resolve import load_manifest

    if previous is None or previous == manifest.version:
        return []
    try:
        old = load_manifest(client, manifest.name, previous)
    except RegistryError:
        return []  # an unreadable old manifest must not block the move
    kept = {member.name for member in manifest.members}
    return [member.name for member in old.members if member.name not in kept]


def previous_holder(client: MlflowClient, name: str, alias: str) -> int:
    """The version ``rollback`` would move ``alias`` back to; NotFound when there is none."""
    stack = holder_stack(history(client, name, alias))
    current = current_holder(client, name, alias)
    if current is None:
        raise NotFound(f"ensemble {name!r} has no alias {alias!r}")
    if len(stack) < 2 or stack[-1] != current:
        raise NotFound(f"{name}@{alias} has no previous holder to roll back to")
    return stack[-2]
