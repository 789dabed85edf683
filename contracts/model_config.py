"""``models.config``: typed reading and writing of TF Serving's model server config (text format).

Training, the registry sync and the local backend all go through here, so the file they write
is the one TF Serving reads (``--model_config_file``): a ``model_config_list`` of models, each
with a base path, a version policy and optional version labels. The protobuf text format of
``ModelServerConfig`` is written and read here by hand, with the standard library only, so that
this bottom layer needs no generated protobuf code; the tests hold it to protobuf's own parser
and printer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.files import atomic_write_text

LABEL_PATTERN = re.compile(r"[a-zA-Z0-9_]+")
"""Version labels TF Serving accepts."""


class ModelConfigError(ValueError):
    """A models.config that cannot be read, or entries that cannot be written."""


@dataclass(slots=True)
class ModelEntry:
    """One model of the config: where its versions live and which of them to serve.

    The version policy is one of: ``versions`` (exactly these), ``all_versions`` (every version
    found), ``latest`` (the N highest). None of them set means TF Serving's default, the latest one.
    """

    name: str
    base_path: str
    versions: list[int] | None = None
    latest: int | None = None
    all_versions: bool = False
    labels: dict[str, int] = field(default_factory=dict)
    model_platform: str = "tensorflow"

    def validate(self) -> None:
        """Raise ModelConfigError for an entry TF Serving would reject."""
        where = f"model {self.name!r}"
        if not self.name:
            raise ModelConfigError("a model needs a name")
        if not self.base_path:
            raise ModelConfigError(f"{where}: base_path is empty")
        chosen = sum([self.versions is not None, self.latest is not None, self.all_versions])
        if chosen > 1:
            raise ModelConfigError(f"{where}: set at most one of versions, latest and all_versions")
        if self.versions is not None and (not self.versions or any(v < 0 for v in self.versions)):
            raise ModelConfigError(f"{where}: versions must be a non-empty list of non-negative integers")
        if self.latest is not None and self.latest < 1:
            raise ModelConfigError(f"{where}: latest must be at least 1")
        for label, version in self.labels.items():
            if not LABEL_PATTERN.fullmatch(label):
                raise ModelConfigError(f"{where}: version label {label!r} must match [a-zA-Z0-9_]+")
            if version < 0:
                raise ModelConfigError(
                    f"{where}: version label {label!r} points at negative version {version}"
                )

    @property
    def num_latest(self) -> int | None:
        """How many latest versions to serve, or None when the policy is specific or all."""
        if self.versions is not None or self.all_versions:
            return None
        return self.latest or 1


def dumps_model_config(entries: Sequence[ModelEntry]) -> str:
    """The text-format config for these entries, as protobuf's ``MessageToString`` prints it."""
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelConfigError(f"model names must be unique, repeated: {', '.join(duplicates)}")
    # No entries is still a (empty) model_config_list, not an unset config: TF Serving accepts a
    # move from one list to another, never from a list to an unset config, so a repository whose
    # last model goes stays reloadable.
    lines = ["model_config_list {"]
    for entry in entries:
        lines += ["  " + line for line in _entry_lines(entry)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _entry_lines(entry: ModelEntry) -> list[str]:
    entry.validate()
    # Fields in field-number order, as protobuf prints them; proto3 leaves empty strings out.
    lines = ["config {"]
    for key, value in (
        ("name", entry.name),
        ("base_path", entry.base_path),
        ("model_platform", entry.model_platform),
    ):
        if value:
            lines.append(f"  {key}: {_quote(value)}")
    policy: list[str] = []
    if entry.versions is not None:
        policy = ["specific {", *(f"  versions: {v}" for v in entry.versions), "}"]
    elif entry.all_versions:
        policy = ["all {", "}"]
    elif entry.latest is not None:
        policy = ["latest {", f"  num_versions: {entry.latest}", "}"]
    if policy:
        lines += ["  model_version_policy {", *("    " + line for line in policy), "  }"]
    for label, version in sorted(entry.labels.items()):
        # A map entry is a message too: proto3 leaves its zero value out.
        shown = [f"    value: {version}"] if version else []
        lines += ["  version_labels {", f"    key: {_quote(label)}", *shown, "  }"]
    lines.append("}")
    return lines


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "'": "\\'", "\\": "\\\\"}


def _quote(text: str) -> str:
    """A text-format string literal, escaped as protobuf escapes it (UTF-8 kept as is)."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def loads_model_config(text: str, *, source: str = "models.config") -> list[ModelEntry]:
    """Parse a text-format config; raises ModelConfigError naming ``source`` on bad input."""
    try:
        config = _Parser(text).message(_SERVER_CONFIG)
    except _ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid model server config: {exc}") from None
    if "custom_model_config" in config:
        raise ModelConfigError(f"{source}: custom_model_config is not supported, use model_config_list")
    try:
        models = config.get("model_config_list", {}).get("config", [])
        entries = [_entry(model) for model in models]
        dumps_model_config(entries)  # the same checks as writing: unique names
    except ModelConfigError as exc:
        raise ModelConfigError(f"{source}: {exc}") from None
    return entries


def _entry(model: dict[str, Any]) -> ModelEntry:
    policy = model.get("model_version_policy", {})  # at most one choice: the parser holds the oneof
    entry = ModelEntry(
        name=model.get("name", ""),
        base_path=model.get("base_path", ""),
        versions=list(policy["specific"].get("versions", [])) if "specific" in policy else None,
        latest=(policy["latest"].get("num_versions") or 1) if "latest" in policy else None,
        all_versions="all" in policy,
        # A map: a key given twice keeps its last value, as protobuf does.
        labels={label.get("key", ""): label.get("value", 0) for label in model.get("version_labels", [])},
        model_platform=model.get("model_platform") or "tensorflow",
    )
    entry.validate()
    return entry


def write_model_config(path: Path, entries: Sequence[ModelEntry]) -> None:
    """Write ``models.config`` atomically: a reader (TF Serving polling it) sees old or new, never half."""
    atomic_write_text(Path(path), dumps_model_config(entries))


def read_model_config(path: Path) -> list[ModelEntry]:
    """Read ``models.config``; raises ModelConfigError for a missing or malformed file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such model config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc}") from None
    return loads_model_config(text, source=str(path))


# --- the text format, for ModelServerConfig only ----------------------------------------------
#
# A schema is {field: (kind, repeated)}; a kind is "string", "int", "uint", "enum", another
# schema (a message), or _ANY (a message kept only as "present": its body is checked for balance
# and skipped). The fields are those of TF Serving's model_server_config.proto.

_ANY: dict[str, tuple[Any, bool]] = {}
_POLICY: dict[str, tuple[Any, bool]] = {
    "latest": ({"num_versions": ("uint", False)}, False),
    "all": ({}, False),
    "specific": ({"versions": ("int", True)}, False),
}
_MODEL: dict[str, tuple[Any, bool]] = {
    "name": ("string", False),
    "base_path": ("string", False),
    "model_type": ("enum", False),
    "model_platform": ("string", False),
    "model_version_policy": (_POLICY, False),
    "version_labels": ({"key": ("string", False), "value": ("int", False)}, True),
    "logging_config": (_ANY, False),
}
_SERVER_CONFIG: dict[str, tuple[Any, bool]] = {
    "model_config_list": ({"config": (_MODEL, True)}, False),
    "custom_model_config": (_ANY, False),
}
_ONEOFS = ({"model_config_list", "custom_model_config"}, {"latest", "all", "specific"})

_TOKEN = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?))(?![\w.])
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>[{}<>:;,\[\]])
    """,
    re.VERBOSE,
)
_INTEGER = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|\d+)")
_UNESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


class _ParseError(Exception):
    pass


@dataclass(slots=True)
class _Token:
    kind: str
    text: str
    line: int
    column: int


def _tokens(text: str) -> Iterator[_Token]:
    position, line, line_start = 0, 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _ParseError(f"{line}:{position - line_start + 1}: unexpected {text[position]!r}")
        kind = str(match.lastgroup)
        if kind != "space":
            yield _Token(kind, match.group(), line, position - line_start + 1)
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = position + match.group().rindex("\n") + 1
        position = match.end()


class _Parser:
    """A recursive-descent reader of protobuf's text format for the schemas above."""

    def __init__(self, text: str) -> None:
        self._tokens = list(_tokens(text))
        self._at = 0

    def _peek(self) -> _Token | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _next(self, what: str) -> _Token:
        token = self._peek()
        if token is None:
            raise _ParseError(f"expected {what}, found the end of the file")
        self._at += 1
        return token

    def _fail(self, token: _Token, message: str) -> _ParseError:
        return _ParseError(f"{token.line}:{token.column}: {message}")

    def message(self, schema: dict[str, tuple[Any, bool]], close: str | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        while True:
            token = self._peek()
            if token is None:
                if close is not None:
                    raise _ParseError(f"expected {close!r}, found the end of the file")
                return values
            if close is not None and token.text == close:
                self._at += 1
                return values
            name = self._next("a field name")
            if name.kind != "ident" or name.text not in schema:
                raise self._fail(name, f"no field named {name.text!r} here")
            kind, repeated = schema[name.text]
            self._field(values, name, kind, repeated)
            separator = self._peek()
            if separator is not None and separator.text in (";", ","):
                self._at += 1

    def _field(self, values: dict[str, Any], name: _Token, kind: Any, repeated: bool) -> None:
        token = self._peek()
        has_colon = token is not None and token.text == ":"
        if has_colon:
            self._at += 1
            token = self._peek()
        if token is not None and token.text == "[" and repeated:
            self._at += 1
            items: list[Any] = []
            while True:
                item = self._peek()
                if item is not None and item.text == "]":
                    self._at += 1
                    break
                if items:
                    comma = self._next("','")
                    if comma.text != ",":
                        raise self._fail(comma, "expected ',' or ']'")
                items.append(self._value(kind, has_colon))
            values.setdefault(name.text, []).extend(items)
            return
        value = self._value(kind, has_colon)
        if repeated:
            values.setdefault(name.text, []).append(value)
            return
        if name.text in values:
            raise self._fail(name, f"field {name.text!r} given twice")
        for oneof in _ONEOFS:
            if name.text in oneof and oneof & set(values):
                raise self._fail(name, f"only one of {', '.join(sorted(oneof))} may be given")
        values[name.text] = value

    def _value(self, kind: Any, has_colon: bool) -> Any:
        token = self._next("a value")
        if isinstance(kind, dict):
            if token.text not in ("{", "<"):
                raise self._fail(token, "expected '{'")
            close = "}" if token.text == "{" else ">"
            return self._skip(close) if kind is _ANY else self.message(kind, close)
        if not has_colon:
            raise self._fail(token, "expected ':'")
        if kind == "string":
            if token.kind != "string":
                raise self._fail(token, "expected a string")
            text = _unquote(token.text)
            while (more := self._peek()) is not None and more.kind == "string":  # "a" "b" is "ab"
                self._at += 1
                text += _unquote(more.text)
            return text
        if kind == "enum":
            if token.kind not in ("ident", "number"):
                raise self._fail(token, "expected an enum value")
            return token.text
        if token.kind != "number" or not _INTEGER.fullmatch(token.text):
            raise self._fail(token, "expected an integer")
        number = _integer(token.text)
        if kind == "uint" and number < 0:
            raise self._fail(token, "expected a non-negative integer")
        if not -(2**63) <= number < 2**64:
            raise self._fail(token, "integer out of range")
        return number

    def _skip(self, close: str) -> dict[str, Any]:
        depth = 1
        while depth:
            token = self._next(repr(close))
            if token.text in ("{", "<"):
                depth += 1
            elif token.text in ("}", ">"):
                depth -= 1
        return {}


def _integer(text: str) -> int:
    """A text-format integer: decimal, ``0x`` hex or ``0`` octal, as protobuf reads them."""
    digits = text.lstrip("-")
    sign = -1 if text.startswith("-") else 1
    if digits[:2].lower() == "0x":
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits[1:], 8)
    return sign * int(digits)


def _unquote(literal: str) -> str:
    """The text of a string literal. Octal and hex escapes are bytes of its UTF-8 encoding."""
    body, out, at = literal[1:-1], bytearray(), 0
    for match in _UNESCAPE.finditer(body):
        out += body[at : match.start()].encode("utf-8")
        octal, hexa, simple = match.groups()
        if octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            out.append(int(hexa, 16))
        else:
            out += _SIMPLE.get(simple, simple).encode("utf-8")
        at = match.end()
    out += body[at:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _ParseError(f"string {literal} is not UTF-8") from None
