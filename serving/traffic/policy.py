"""The traffic policy of one served ensemble: shadow fraction, sticky canary and comparison window.

A policy is part of the gateway settings (``traffic``: ensemble name -> policy), so it comes from
the YAML file, ``ENSEMBLE_TRAFFIC`` (JSON) or ``--traffic NAME:KEY=VALUE,...`` like every other
setting, and the file is re-read while the gateway runs (``serving.traffic.reload``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ALIAS = re.compile(r"^[A-Za-z0-9_]+$")
# HTTP header names and gRPC metadata keys both: lower case, and no binary ('-bin') or reserved key.
_HEADER = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class TrafficPolicy(BaseModel):
    """How the requests of one ensemble reach its champion and its challenger alias."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    champion: str = Field(
        default="champion", description="Alias that answers unless the canary picks the other."
    )
    challenger: str = Field(
        default="challenger", description="Alias under test: canaried to and shadowed to."
    )
    shadow_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction (0-1) of the requests the pair answers that the other alias also answers, in the "
            "background, for the comparison; the client never waits for it."
        ),
    )
    shadow_concurrency: int = Field(
        default=8,
        ge=1,
        description=(
            "Shadow calls of this ensemble in flight at once; one more is dropped and counted, never queued."
        ),
    )
    canary_percent: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Percentage (0-100) of requests the challenger answers instead of the champion.",
    )
    sticky_header: str = Field(
        default="x-user-id",
        description=(
            "Request header (gRPC metadata key) whose value keeps a user on one side of the canary; "
            "requests without it are assigned at random."
        ),
    )
    window_requests: int = Field(
        default=1000, ge=1, description="The comparison window keeps at most this many recent requests."
    )
    window_s: float = Field(
        default=600.0, gt=0, description="...and only those observed within this many seconds."
    )

    @field_validator("champion", "challenger")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not _ALIAS.match(value):
            raise ValueError(f"alias {value!r} must match [a-zA-Z0-9_]+ (a TF Serving label)")
        return value

    @field_validator("sticky_header")
    @classmethod
    def _header(cls, value: str) -> str:
        name = value.strip().lower()
        if not _HEADER.match(name) or name.endswith("-bin") or name.startswith("grpc-"):
            raise ValueError(
                f"sticky header {value!r} must be a plain header name such as x-user-id "
                "(letters, digits, '-', '_', '.'; not grpc-* or *-bin)"
            )
        return name

    @model_validator(mode="after")
    def _two_sides(self) -> TrafficPolicy:
        if self.champion == self.challenger:
            raise ValueError(f"champion and challenger must be different aliases, both are {self.champion!r}")
        return self


def check_policies(
    traffic: Mapping[str, TrafficPolicy],
    *,
    ensemble: str | None,
    aliases: Sequence[str],
    from_registry: bool,
) -> None:
    """ValueError (one line) unless every policy names the served ensemble and aliases it serves."""
    if not traffic:
        return
    if not from_registry:
        raise ValueError(
            "a traffic policy needs champion and challenger aliases: serve from the registry "
            "(tracking URI, ensemble and aliases), not a manifest file"
        )
    for name, policy in traffic.items():
        if ensemble is not None and name != ensemble:
            raise ValueError(f"traffic policy for ensemble {name!r}, but the gateway serves {ensemble!r}")
        for alias in (policy.champion, policy.challenger):
            if alias not in aliases:
                raise ValueError(
                    f"traffic policy of {name!r} names alias {alias!r}, which is not served "
                    f"(aliases: {', '.join(aliases)})"
                )


def parse_traffic_option(values: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--traffic NAME:KEY=VALUE[,KEY=VALUE]`` (repeatable) as the nested dict the settings validate."""
    traffic: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, pairs = value.partition(":")
        if not sep or not name or not pairs:
            raise ValueError(f"--traffic {value!r} must be NAME:KEY=VALUE[,KEY=VALUE]")
        policy = traffic.setdefault(name, {})
        for pair in pairs.split(","):
            key, eq, setting = pair.strip().partition("=")
            if not eq or not key or not setting:
                raise ValueError(f"--traffic {value!r}: {pair!r} must be KEY=VALUE")
            policy[key.strip()] = setting.strip()
    return traffic
