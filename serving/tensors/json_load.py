"""A JSON body parsed as TF Serving's parser (RapidJSON) parses it, or refused with its message."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

from serving.errors import InvalidArgument

_UTF8_BOM: Final = b"\xef\xbb\xbf"
_NON_FINITE_TOKEN: Final = re.compile(rb"NaN|Infinity")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def load_json(body: bytes | str) -> Any:
    """Parse a JSON body as TF Serving's parser (RapidJSON) does, or refuse it with a 400.

    UTF-8 only; a leading UTF-8 byte order mark is skipped, as RapidJSON's UTF-8 stream skips it;
    bare ``NaN``/``Infinity``/``-Infinity`` are accepted. Other encodings, numbers too large for a
    double (``1e309``) and lone UTF-16 surrogates (``"\\ud800"``) are parse errors. orjson does
    all of this except the bare tokens; only bodies holding one take the standard parser.
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    if not raw or raw.isspace():
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _NON_FINITE_TOKEN.search(raw) is None:
            raise InvalidArgument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    return _load_with_non_finite(raw)


def _load_with_non_finite(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    offset = _lone_surrogate_at(text)
    if offset is not None:
        raise InvalidArgument(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"
        )
    try:
        return json.loads(text, parse_float=_finite_float, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidArgument(f"JSON Parse error: Number too big to be stored in double: {text[:40]}")
    return value


def _json_int(text: str) -> int | float:
    # Beyond 64 bits RapidJSON (and orjson) read an integer as a double; Python's int() would
    # also refuse more than 4300 digits with a ValueError.
    return int(text) if len(text) <= 20 else _finite_float(text)


def _lone_surrogate_at(text: str) -> int | None:
    """Where a ``\\uD800``-style escape has no partner, or None (only the slow path asks)."""
    if "\\u" not in text:
        return None
    expect_low_at: int | None = None  # where a high surrogate's partner must start
    high_at = 0
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        if _backslashes_before(text, start) % 2:
            continue  # an escaped backslash followed by "u...": text, not an escape
        is_high = match.group()[3] in "89abAB"
        if expect_low_at is not None and (is_high or start != expect_low_at):
            return high_at
        if is_high:
            expect_low_at, high_at = match.end(), start
        elif expect_low_at is None:
            return start
        else:
            expect_low_at = None
    return high_at if expect_low_at is not None else None


def _backslashes_before(text: str | bytes, at: int) -> int:
    """How many backslashes come right before position ``at``: odd means ``text[at]`` is escaped."""
    backslash: str | int = "\\" if isinstance(text, str) else 0x5C
    first = at
    while first and text[first - 1] == backslash:
        first -= 1
    return at - first
