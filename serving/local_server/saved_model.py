"""One loaded SavedModel version: its signatures as TF Serving reports them, and running them.

The only module of the serving package that imports TensorFlow. Calls are blocking and
thread-safe; the server runs them in a thread pool so requests execute concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.core import TensorInfo, check_output_filter
from serving.errors import FailedPrecondition, Internal, InvalidArgument
from serving.protos import SignatureDef, SignatureDefMap
from serving.tensors import STRING_DTYPE, data_type, data_type_name, numpy_dtype

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"


def configure_devices() -> list[str]:
    """Let TensorFlow grow GPU memory as needed (several versions share a GPU); the GPUs it sees."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: the device is already initialised, TensorFlow keeps its setting.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]


def _tensor_infos(infos: Mapping[str, Any]) -> dict[str, TensorInfo]:
    result: dict[str, TensorInfo] = {}
    for key, info in infos.items():
        shape = () if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        result[key] = TensorInfo(dtype=numpy_dtype(info.dtype), shape=shape)
    return result


def read_signature_defs(path: Path) -> SignatureDefMap:
    """The ``serve`` meta graph's signature defs, exactly as stored in ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            result = SignatureDefMap()
            for key, signature in meta_graph.signature_def.items():
                # TensorFlow's message and ours share the wire format; bytes cross the two pools.
                result.signature_def[key].CopyFrom(SignatureDef.FromString(signature.SerializeToString()))
            return result
    raise FailedPrecondition(f"{path} has no meta graph tagged '{SERVE_TAG}'")


class SavedModelServable:
    """A loaded version: ``run`` one of its signatures on numpy inputs."""

    def __init__(self, path: Path, loaded: Any, signature_defs: SignatureDefMap) -> None:
        self.path = path
        self._loaded = loaded  # keeps the variables the functions use alive
        self._functions = dict(loaded.signatures)
        self.signature_defs = signature_defs
        # Only callable signatures: the init op's entry has no typed tensors.
        defs = signature_defs.signature_def
        self._inputs = {key: _tensor_infos(defs[key].inputs) for key in self._functions if key in defs}
        self._outputs = {key: _tensor_infos(defs[key].outputs) for key in self._functions if key in defs}

    def _signature_key(self, signature_name: str) -> str:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self._functions:
            raise FailedPrecondition(f'Serving signature key "{key}" not found.')
        return key

    def input_signature(self, signature_name: str) -> dict[str, TensorInfo]:
        return self._inputs[self._signature_key(signature_name)]

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> tuple[str, dict[str, np.ndarray]]:
        """The signature key used and its outputs (all, or those named in ``output_filter``)."""
        import tensorflow as tf

        key = self._signature_key(signature_name)
        expected = self._inputs[key]
        _check_names(set(inputs), set(expected))
        check_output_filter(output_filter, self._outputs[key])
        for name, array in inputs.items():
            _check_shape(name, np.asarray(array), expected[name])
        tensors = {name: _to_tensor(tf, name, array, expected[name]) for name, array in inputs.items()}
        try:
            results = self._functions[key](**tensors)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgument(_op_error_message(exc.message)) from None
        except tf.errors.OpError as exc:
            raise Internal(_op_error_message(exc.message)) from None
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(_op_error_message(str(exc))) from None
        wanted = output_filter or list(results)
        return key, {name: _to_numpy(results[name]) for name in wanted}


def _check_names(sent: set[str], expected: set[str]) -> None:
    if sent == expected:
        return
    extra, missing = sorted(sent - expected), sorted(expected - sent)
    raise InvalidArgument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
    )


def _to_tensor(tf: Any, name: str, array: np.ndarray, info: TensorInfo) -> Any:
    array = np.asarray(array)
    want = data_type(info.dtype)
    if info.dtype == STRING_DTYPE:
        if array.dtype.kind not in "OSU":
            raise InvalidArgument(
                f"Expects arg[{name}] to be string but {data_type_name(data_type(array.dtype))} is provided"
            )
        return tf.constant(array.astype(object) if array.dtype.kind == "U" else array, dtype=tf.string)
    got = data_type(array.dtype)
    if got != want:
        raise InvalidArgument(
            f"Expects arg[{name}] to be {data_type_name(want)} but {data_type_name(got)} is provided"
        )
    return tf.convert_to_tensor(array)


def _check_shape(name: str, array: np.ndarray, info: TensorInfo) -> None:
    # Signature functions of a loaded SavedModel do not check shapes themselves: a wrong one
    # would fail deep in the graph with an obscure message.
    if not info.shape and array.ndim == 0:
        return
    fits = len(info.shape) == array.ndim and all(
        want < 0 or want == got for want, got in zip(info.shape, array.shape, strict=True)
    )
    if not fits:
        expected = ",".join("?" if size < 0 else str(size) for size in info.shape)
        raise InvalidArgument(
            f"input {name} has shape [{','.join(map(str, array.shape))}] "
            f"but the signature expects [{expected}]"
        )


def _to_numpy(tensor: Any) -> np.ndarray:
    array = np.asarray(tensor.numpy())
    if array.dtype.kind == "S":
        return array.astype(object)
    return array


_NOISE = ("[[", "Detected at node", "Graph execution error", "File ", "Stack trace", "Traceback")


def _op_error_message(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong, without graph locations."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_NOISE)]
    if not useful:
        return "model execution failed"
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", useful[-1])


def load_servable(path: Path) -> SavedModelServable:
    """Load the SavedModel at ``path`` (a version folder); blocking, seconds for a big model."""
    import tensorflow as tf

    signature_defs = read_signature_defs(path)
    loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    servable = SavedModelServable(path, loaded, signature_defs)
    missing = sorted(set(servable._functions) - set(signature_defs.signature_def))
    if missing:
        raise FailedPrecondition(f"{path}: signatures {missing} are not in the serve meta graph")
    return servable
