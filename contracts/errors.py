"""One-line error text: the first line of an exception, the first problem of a pydantic error.

Users see errors as one line (a CLI's ``error: …``, a gateway's ``{"error": …}``), never a
traceback, so every part shortens exceptions the same way, here.
"""

from __future__ import annotations

from pydantic import ValidationError


def one_line(error: BaseException | str | None, *, limit: int | None = None) -> str:
    """The first non-blank line of ``error``, stripped; an exception's type name when it says nothing.

    A string (or None, as gRPC's ``details()`` may be) that says nothing gives ``""``.

    With ``limit``, a longer line is cut to that many characters, ending in ``...``.
    """
    text = str(error).strip() if error is not None else ""
    if text:
        line = text.splitlines()[0].strip()
    else:
        line = type(error).__name__ if isinstance(error, BaseException) else ""
    if limit is not None and len(line) > limit:
        return line[: max(limit - 3, 0)] + "..."
    return line


def validation_problem(error: ValidationError) -> tuple[str, str]:
    """The first problem of ``error`` as (dotted location, message), pydantic's "Value error, " dropped.

    The location is empty when the problem is with the whole document.
    """
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return where, str(first["msg"]).removeprefix("Value error, ")


def validation_summary(error: ValidationError, *, what: str = "") -> str:
    """The first problem of ``error`` as one line, ``location: message``.

    ``what`` names the location when the problem is with the whole document (e.g. ``manifest``).
    """
    where, message = validation_problem(error)
    where = where or what
    return f"{where}: {message}" if where else message
