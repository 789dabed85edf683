"""Where one request goes: which alias answers it, and whether the other alias shadows it.

:func:`route` is a pure function of the policy, what the request addressed, its sticky key and two
random draws, so every rule is tested without a server:

* a request that names a version, or a label outside the policy's pair, is answered as addressed
  and never shadowed;
* a request that names the champion or the challenger label is answered by that alias (never
  rerouted) and may be shadowed to the other one;
* any other request is answered by the challenger for ``canary_percent`` of the users, by the
  champion otherwise, and shadowed to the other side for ``shadow_fraction`` of the requests.

The canary is sticky: a request with the sticky header falls on the challenger exactly when
:func:`sticky_bucket` of its value is below the percentage, so one user always sees one side, and
raising the percentage only moves users from the champion to the challenger. Without the header
the side is drawn at random.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from contracts.comparison import Side
from serving.traffic.policy import TrafficPolicy

How = Literal["off", "explicit", "sticky", "random"]

ALIAS_HEADER = "x-ensemble-alias"
"""Response header (gRPC trailing metadata) naming the alias that answered."""

_BUCKETS = float(1 << 64)


def sticky_bucket(ensemble: str, key: str) -> float:
    """A number in [0, 1) fixed by the ensemble and the key, on every process and after restarts.

    Python's ``hash()`` is salted per process, so BLAKE2b is used instead; the ensemble name
    is part of it, so two ensembles split their users independently.
    """
    digest = hashlib.blake2b(f"{ensemble}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _BUCKETS


def other(side: Side) -> Side:
    return "challenger" if side == "champion" else "champion"


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one request.

    ``answer`` is None when the policy does not apply (no policy, an explicit version, a label
    outside the pair, or the champion not served): the request is answered exactly as addressed.
    Otherwise ``label`` is the alias to answer from and ``version`` its manifest version;
    ``shadow_label``/``shadow_version`` name the other side when it also answers in the background.
    """

    answer: Side | None = None
    label: str | None = None
    version: int | None = None
    shadow: Side | None = None
    shadow_label: str | None = None
    shadow_version: int | None = None
    how: How = "off"


AS_ADDRESSED = Route()


def route(
    policy: TrafficPolicy | None,
    *,
    ensemble: str,
    label: str | None,
    version: int | None,
    key: str | None,
    served: Mapping[str, int],
    canary_draw: float,
    shadow_draw: float,
) -> Route:
    """Decide one request. ``served`` maps each served alias to its manifest version; the draws
    are uniform in [0, 1) (``canary_draw`` is used only without a sticky key)."""
    if policy is None or version is not None or policy.champion not in served:
        return AS_ADDRESSED
    sides: dict[Side, str] = {"champion": policy.champion, "challenger": policy.challenger}
    challenger_served = policy.challenger in served
    how: How
    if label is not None:
        if label == policy.champion:
            answer: Side = "champion"
        elif label == policy.challenger and challenger_served:
            answer = "challenger"
        else:
            return AS_ADDRESSED
        how = "explicit"
    elif not challenger_served:
        answer, how = "champion", "off"
    elif key:
        answer = "challenger" if sticky_bucket(ensemble, key) * 100 < policy.canary_percent else "champion"
        how = "sticky"
    else:
        answer = "challenger" if canary_draw * 100 < policy.canary_percent else "champion"
        how = "random"
    shadow: Side | None = None
    if challenger_served and shadow_draw < policy.shadow_fraction:
        shadow = other(answer)
    return Route(
        answer=answer,
        label=sides[answer],
        version=served[sides[answer]],
        shadow=shadow,
        shadow_label=sides[shadow] if shadow else None,
        shadow_version=served[sides[shadow]] if shadow else None,
        how=how,
    )
