"""The answer detail a request opts into with ``x-ensemble-detail``: spread and member outputs.

``x-ensemble-detail: spread`` adds ``<output>:spread`` (the weighted standard deviation across the
members that answered); ``x-ensemble-detail: members`` adds that and ``<output>:<member>`` for each
member that answered. Plain TF Serving clients never send the header and see neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contracts.combine import Combined
from contracts.manifest import MemberRef

DETAIL_HEADER = "x-ensemble-detail"
SPREAD_SUFFIX = ":spread"


@dataclass(frozen=True, slots=True)
class Detail:
    """What a request asked to see beyond the combined outputs."""

    spread: bool = False
    members: bool = False


NO_DETAIL = Detail()


def requested_detail(headers: Mapping[str, str] | None) -> Detail:
    """The detail ``headers`` ask for (a comma-separated list, any case)."""
    if not headers:
        return NO_DETAIL
    value = headers.get(DETAIL_HEADER, "")
    words = {word.strip().lower() for word in value.split(",") if word.strip()}
    members = "members" in words
    return Detail(spread=members or "spread" in words, members=members)


def detailed_outputs(
    combined: Combined,
    detail: Detail,
    members: Sequence[MemberRef],
    answers: Sequence[Mapping[str, np.ndarray] | None],
    names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The combined outputs plus the detail asked for (``combined`` holds the spread when asked)."""
    outputs: dict[str, np.ndarray] = dict(combined.outputs)
    for name, spread in combined.spread.items():
        outputs[name + SPREAD_SUFFIX] = spread
    if detail.members:
        for member, answer in zip(members, answers, strict=True):
            if answer is not None:
                for name in names:
                    outputs[f"{name}:{member.name}"] = answer[name]
    return outputs
