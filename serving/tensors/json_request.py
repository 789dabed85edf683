"""TF Serving's REST predict body (``instances`` or ``inputs``) as named numpy inputs.

Bodies are converted with whole-array numpy operations where numpy can take them in one step;
strings, ragged lists and mixed types take the checked walk of ``serving.tensors.json_values``,
which also produces TF Serving's exact error messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from serving.core import TensorInfo
from serving.errors import InvalidArgument, ServingError
from serving.protos import DataType
from serving.tensors.dtypes import data_type
from serving.tensors.json_load import _backslashes_before, load_json
from serving.tensors.json_values import _checked_column, _dense_shape, _fast_numeric, _is_b64, _preview
from serving.tensors.proto import _Budget

SignatureLookup = Callable[[str], Mapping[str, TensorInfo]]
"""Maps a request's ``signature_name`` ("" for the default) to the signature's inputs."""


@dataclass(slots=True)
class PredictRequestJson:
    """A parsed REST predict body."""

    inputs: dict[str, np.ndarray]
    signature_name: str
    columnar: bool
    """True for ``inputs`` (the answer uses ``outputs``), False for ``instances``."""


def parse_predict_request(
    body: bytes | str | Mapping[str, Any], signature: SignatureLookup, max_bytes: int | None = None
) -> PredictRequestJson:
    """Turn a TF Serving predict body into named numpy inputs, typed by the signature's dtypes.

    Raises InvalidArgument with TF Serving's messages for malformed bodies; ``signature`` may raise
    (e.g. NotFound for an unknown model), which propagates unchanged. ``max_bytes`` bounds what the
    inputs together may decode to: a body holding too many values is refused before it is parsed
    (parsing makes a Python object of every value), then each input is checked on the shape of its
    lists before it is converted.
    """
    if isinstance(body, bytes | str):
        raw_body = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        _refuse_too_many_values(raw_body, signature, max_bytes)
    doc = load_json(body) if isinstance(body, bytes | str) else body
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {_preview(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(
            f"JSON Value: {_preview(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    infos = signature(signature_name)
    if not infos:
        raise InvalidArgument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_preview(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    # Lists holding true/false are the one case numpy silently coerces (True -> 1); such bodies
    # take the checked path. Byte search on the body is cheap compared to scanning the values.
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    may_hold_bools = not isinstance(raw, bytes) or b"true" in raw or b"false" in raw
    budget = _Budget(max_bytes)
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {_preview(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {_preview(doc)} No values in 'instances' array")
        inputs = _inputs_from_instances(instances, infos, may_hold_bools, budget)
        return PredictRequestJson(inputs, signature_name, columnar=False)
    if has_inputs:
        inputs = _inputs_from_columns(doc["inputs"], infos, may_hold_bools, budget)
        return PredictRequestJson(inputs, signature_name, columnar=True)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


_LARGEST_ITEMSIZE: Final = 8  # float64, int64, or one object reference per string


def _refuse_too_many_values(raw: bytes, signature: SignatureLookup, max_bytes: int | None) -> None:
    """InvalidArgument when the body's values, at the smallest input's size, exceed ``max_bytes``.

    Every JSON value takes at least two bytes (itself and a separator), so only a body longer than
    a quarter of the bound can hold too many; only such a body is counted, and only when the
    default signature is known (otherwise parsing reports the first error, as TF Serving does).
    """
    if max_bytes is None or (len(raw) // 2 + 1) * _LARGEST_ITEMSIZE <= max_bytes:
        return
    try:
        infos = signature("")
    except ServingError:
        return
    if not infos:
        return
    itemsize = min(info.dtype.itemsize for info in infos.values())
    values = _json_value_count(raw)
    if values * itemsize > max_bytes:
        raise InvalidArgument(
            f"The request body holds {values} values, {values * itemsize} bytes or more decoded, "
            f"more than the {max_bytes} bytes one request may decode to"
        )


def _json_value_count(raw: bytes) -> int:
    """How many values a JSON text holds, counted on its bytes without parsing it.

    A container of k elements has k - 1 commas, so the values are the commas outside strings plus
    one, less the empty containers. Used only as a bound: on text that is not JSON it is a guess.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(data == 0x22)
    if quotes.size and b'\\"' in raw:
        # A quote after an odd run of backslashes is part of a string, not its end.
        candidates = quotes[(quotes > 0) & (data[np.maximum(quotes - 1, 0)] == 0x5C)]
        escaped = [q for q in candidates.tolist() if _backslashes_before(raw, q) % 2]
        quotes = np.setdiff1d(quotes, np.asarray(escaped, dtype=quotes.dtype), assume_unique=True)
    commas = np.flatnonzero(data == 0x2C)
    outside = int(np.count_nonzero(np.searchsorted(quotes, commas) % 2 == 0))
    empty = sum(1 for _ in _EMPTY_CONTAINER.finditer(raw))
    return max(outside + 1 - empty, 0)


_EMPTY_CONTAINER: Final = re.compile(rb"[\[{][ \t\r\n]*[\]}]")


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _inputs_from_instances(
    instances: list[Any], infos: Mapping[str, TensorInfo], may_hold_bools: bool, budget: _Budget
) -> dict[str, np.ndarray]:
    names = sorted(infos)
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    if not _is_named_object(instances[0]):
        name = next(iter(infos))
        for index, item in enumerate(instances):
            if _is_named_object(item):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
        column = _column(
            instances, infos[name], name, None, batched=True, may_hold_bools=may_hold_bools, budget=budget
        )
        return {name: column}
    wanted = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not _is_named_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for key in item:
            if key not in wanted:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {key}"
                )
        if len(item) != len(wanted):
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. JSON object: {_preview(item)} "
                f"keys must be equal to: {','.join(names)}"
            )
        for name in names:
            columns[name].append(item[name])
    return {
        name: _column(
            columns[name], infos[name], name, name, batched=True, may_hold_bools=may_hold_bools, budget=budget
        )
        for name in names
    }


def _inputs_from_columns(
    value: Any, infos: Mapping[str, TensorInfo], may_hold_bools: bool, budget: _Budget
) -> dict[str, np.ndarray]:
    if not _is_named_object(value):
        if len(infos) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        name, info = next(iter(infos.items()))
        return {
            name: _column(
                value, info, name, name, batched=False, may_hold_bools=may_hold_bools, budget=budget
            )
        }
    inputs: dict[str, np.ndarray] = {}
    for name in sorted(infos):
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        inputs[name] = _column(
            value[name], infos[name], name, name, batched=False, may_hold_bools=may_hold_bools, budget=budget
        )
    return inputs


def _column(
    value: Any,
    info: TensorInfo,
    name: str,
    key: str | None,
    *,
    batched: bool,
    may_hold_bools: bool,
    budget: _Budget,
) -> np.ndarray:
    """One input's values as an array of the signature's dtype: numpy first, the checked walk on doubt.

    ``key`` names the input in TF Serving's messages (None where it names none). What the values
    would decode to is charged to ``budget`` first, from the shape their first elements give.
    """
    dtype_enum = data_type(info.dtype)
    shape = _dense_shape(value)
    budget.take(name, shape, dtype_enum, math.prod(shape) * info.dtype.itemsize)
    if dtype_enum != DataType.DT_STRING and not (may_hold_bools and dtype_enum != DataType.DT_BOOL):
        fast = _fast_numeric(value, info.dtype)
        if fast is not None:
            return fast
    return _checked_column(value, dtype_enum, key, batched=batched)
