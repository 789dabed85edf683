"""What a fan-out's outcome means for the client: a member answer checked, and the error below quorum.

Below quorum the answer is UNAVAILABLE naming each member without an answer and why; when the
deadline decided it, DEADLINE_EXCEEDED; when every member that failed refused the request itself
(``REQUEST_FAULTS``: malformed or too large), the client gets that refusal as what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contracts.manifest import Manifest
from serving.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ServingError, Unavailable
from serving.fanout import FanOut
from serving.manifest_source import served_version
from serving.members import REQUEST_FAULTS, MemberError

_REFUSALS: dict[str, type[InvalidArgument | ResourceExhausted]] = {
    "invalid_argument": InvalidArgument,
    "resource_exhausted": ResourceExhausted,
}
_CUT_OFF = "cut_off (no answer before the request deadline passed)"
_NOT_NEEDED = "not_needed (cancelled: the quorum could no longer be met)"


def checked(outputs: dict[str, np.ndarray], expected: Sequence[str], rows: int) -> dict[str, np.ndarray]:
    """A member answer that lacks an output or has the wrong rows counts as that member failing."""
    for name in expected:
        array = outputs.get(name)
        if array is None:
            raise MemberError("bad_answer", f"no output {name!r} in the answer")
        if array.ndim == 0 or array.shape[0] != rows:
            raise MemberError("bad_answer", f"output {name!r} has shape {list(array.shape)} for {rows} rows")
    return outputs


def below_quorum(manifest: Manifest, result: FanOut[Any]) -> ServingError:
    """The error for a fan-out that missed the quorum, naming each member without an answer and why."""
    unfinished = _CUT_OFF if result.deadline_passed else _NOT_NEEDED
    why_by_member = {i: str(failure) for i, failure in result.failures.items()}
    why_by_member.update((i, unfinished) for i in result.unfinished)
    why = "; ".join(f"{manifest.members[i].name}: {why_by_member[i]}" for i in sorted(why_by_member))
    quorum = manifest.combiner
    summary = (
        f"ensemble {manifest.name} v{served_version(manifest)}: "
        f"{sum(result.answered)}/{len(manifest.members)} members answered, quorum needs "
        f"{quorum.min_members} member(s) and weight {quorum.min_weight:g}"
    )
    if result.deadline_passed:
        return DeadlineExceeded(f"{summary}; deadline passed; {why}")
    refusal = _refusal(manifest, result)
    return refusal if refusal is not None else Unavailable(f"{summary}; {why}")


def _refusal(manifest: Manifest, result: FanOut[Any]) -> InvalidArgument | ResourceExhausted | None:
    """The request's own fault, when every member that failed refused the request itself."""
    failures = result.failures
    if not failures or any(f.reason not in REQUEST_FAULTS for f in failures.values()):
        return None
    first = min(failures)
    return _REFUSALS[failures[first].reason](
        f"ensemble {manifest.name}: member {manifest.members[first].name} refused the request: "
        f"{failures[first]}"
    )
