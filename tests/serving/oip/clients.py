"""Triton's and KServe's own Python clients against a server, unchanged, the way their users call them.

Run by the interpreter of the client virtual environment (``tests/serving/oip/client_venv.py``),
never the project's: ``tritonclient`` and ``kserve`` pin other versions of our dependencies, and
this script imports nothing from the project. It reads a JSON list of calls on stdin and prints one
JSON line with a result per call::

    {"client": "triton_http", "url": "127.0.0.1:8501", "op": "infer", "model": "digits",
     "version": "champion", "id": "r1", "parameters": {...}, "outputs": ["probabilities"],
     "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [...],
                 "binary": true, "send_shape": [3, 64]}]}

``client`` is ``triton_http``, ``triton_grpc``, ``kserve_rest`` (v2), ``kserve_grpc`` or
``kserve_v1`` (REST v1); ``op`` is ``infer``, ``health`` (live, ready and model ready; ``model``
optional), ``metadata`` or ``wire`` (the client's own descriptors of the protocol's messages, to
compare with ours). Both libraries register the protocol's messages under the same names, so one
process runs the calls of one library only (``family``). ``send_shape`` sends another shape than
the data has, as a buggy caller would.
An ``infer`` result has each output's datatype, shape and flat values, the response id, version
and parameters; a failed call has ``error`` with the client's status and message.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np


def _array(spec: dict[str, Any]) -> np.ndarray:
    if spec["datatype"] == "BYTES":
        flat = np.array([value.encode("utf-8") for value in spec["data"]], dtype=np.object_)
    else:
        import tritonclient.utils

        flat = np.array(spec["data"], dtype=tritonclient.utils.triton_to_np_dtype(spec["datatype"]))
    return flat.reshape(spec["shape"])


def _outputs(arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> dict[str, Any]:
    return {
        name: {
            "datatype": datatypes[name],
            "shape": list(array.shape),
            "data": [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for v in array.reshape(-1).tolist()
            ],
        }
        for name, array in arrays.items()
    }


# --------------------------------------------------------------------------- tritonclient


def _triton(call: dict[str, Any]) -> dict[str, Any]:
    grpc = call["client"] == "triton_grpc"
    if grpc:
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module
    client = client_module.InferenceServerClient(url=call["url"])
    model, version = call.get("model", ""), call.get("version", "")
    if call["op"] == "health":
        answer = {"live": client.is_server_live(), "ready": client.is_server_ready()}
        if model:
            answer["model_ready"] = client.is_model_ready(model, version)
        return answer
    if call["op"] == "metadata":
        server = client.get_server_metadata(**({"as_json": True} if grpc else {}))
        meta = client.get_model_metadata(model, version, **({"as_json": True} if grpc else {}))
        return {"server": server, "model": meta}
    inputs = []
    for spec in call["inputs"]:
        array = _array(spec)
        tensor = client_module.InferInput(spec["name"], list(array.shape), spec["datatype"])
        if grpc:
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=spec.get("binary", True))
        if "send_shape" in spec:
            tensor.set_shape(spec["send_shape"])
        inputs.append(tensor)
    outputs = None
    if call.get("outputs") is not None:
        outputs = [
            client_module.InferRequestedOutput(name)
            if grpc
            else client_module.InferRequestedOutput(name, binary_data=call.get("binary_outputs", True))
            for name in call["outputs"]
        ]
    result = client.infer(
        model,
        inputs,
        model_version=version,
        outputs=outputs,
        request_id=call.get("id", ""),
        parameters=call.get("parameters"),
    )
    response = result.get_response(as_json=True) if grpc else result.get_response()
    names = [output["name"] for output in response["outputs"]]
    parameters = response.get("parameters", {})
    if grpc:  # as JSON, a gRPC InferParameter is {"string_param": ...}
        parameters = {key: next(iter(value.values())) for key, value in parameters.items()}
    return {
        "outputs": _outputs(
            {name: result.as_numpy(name) for name in names},
            {output["name"]: output["datatype"] for output in response["outputs"]},
        ),
        "id": response.get("id", ""),
        "model_version": response.get("model_version", ""),
        "parameters": parameters,
        "binary": [
            bool(output.get("parameters", {}).get("binary_data_size")) for output in response["outputs"]
        ],
    }


# --------------------------------------------------------------------------- KServe SDK


async def _kserve(call: dict[str, Any]) -> dict[str, Any]:
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )
    from kserve.protocol.infer_type import RequestedOutput

    model = call.get("model", "")
    kind = call["client"]
    if kind == "kserve_grpc":
        client: Any = InferenceGRPCClient(url=call["url"], timeout=30)
    else:
        client = InferenceRESTClient(RESTConfig(protocol="v1" if kind == "kserve_v1" else "v2", timeout=30))
    base_url = f"http://{call['url']}"
    try:
        if call["op"] == "health":
            if kind == "kserve_grpc":
                answer = {"live": await client.is_server_live(), "ready": await client.is_server_ready()}
                if model:
                    answer["model_ready"] = await client.is_model_ready(model)
                return answer
            answer = {"live": await client.is_server_live(base_url)}
            if kind == "kserve_rest":
                answer["ready"] = await client.is_server_ready(base_url)
            if model:
                answer["model_ready"] = await client.is_model_ready(base_url, model)
            return answer
        inputs = []
        for spec in call["inputs"]:
            array = _array(spec)
            tensor = InferInput(spec["name"], list(array.shape), spec["datatype"])
            binary = spec.get("binary", kind == "kserve_grpc")
            if binary:
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array, binary_data=False)
            if "send_shape" in spec:
                tensor.shape = spec["send_shape"]
            inputs.append(tensor)
        request = InferRequest(
            model_name=model,
            infer_inputs=inputs,
            request_id=call.get("id") or None,
            parameters=call.get("parameters"),
            request_outputs=[RequestedOutput(name) for name in call["outputs"]]
            if call.get("outputs")
            else None,
            model_version=call.get("version") or None,
        )
        if kind == "kserve_grpc":
            response = await client.infer(request)
        else:
            response = await client.infer(base_url, request, model_name=model)
        parameters = response.parameters or {}
        if kind == "kserve_grpc":
            parameters = {key: value.string_param for key, value in parameters.items()}
        return {
            "outputs": _outputs(
                {output.name: output.as_numpy() for output in response.outputs},
                {output.name: output.datatype for output in response.outputs},
            ),
            "id": response.id or "",
            "model_version": response.model_version or "",
            "parameters": dict(parameters),
        }
    finally:
        await client.close()


# --------------------------------------------------------------------------- wire check


def family(call: dict[str, Any]) -> str:
    """``kserve`` or ``triton``: the library a call uses."""
    return "kserve" if call["client"].startswith("kserve") else "triton"


def _wire(client: str) -> dict[str, Any]:
    """Each message's fields as (number, type, repeated, message type) in the client's descriptors."""
    if client == "kserve":
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as module
    else:
        from tritonclient.grpc import service_pb2 as module

    def fields(descriptor: Any, prefix: str, out: dict[str, Any]) -> None:
        out[prefix + descriptor.name] = {
            field.name: [
                field.number,
                field.type,
                field.is_repeated,
                field.message_type.full_name if field.message_type else "",
            ]
            for field in descriptor.fields
        }
        for nested in descriptor.nested_types:
            fields(nested, prefix + descriptor.name + ".", out)

    messages: dict[str, Any] = {}
    for message in module.DESCRIPTOR.message_types_by_name.values():
        fields(message, "", messages)
    service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {
        "messages": messages,
        "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods},
    }


def _run(call: dict[str, Any]) -> dict[str, Any]:
    if call["op"] == "wire":
        return _wire(family(call))
    try:
        if call["client"].startswith("triton_"):
            return _triton(call)
        return asyncio.run(_kserve(call))
    except Exception as exc:  # the client's own exception types: their status and message are the result
        return {"error": _error(exc)}


def _error(exc: Any) -> dict[str, Any]:
    """The status and message of tritonclient's, gRPC's or httpx's exception."""
    status: Any = None
    message = str(exc)
    if hasattr(exc, "status") and callable(exc.status):  # tritonclient's InferenceServerException
        status, message = exc.status(), exc.message()
    elif hasattr(exc, "code") and callable(exc.code):  # grpc.RpcError
        status, message = exc.code().name, exc.details()
    elif getattr(exc, "response", None) is not None:  # httpx.HTTPStatusError
        status = exc.response.status_code
        message = exc.response.json().get("error", exc.response.text)
    return {"type": type(exc).__name__, "status": str(status), "message": message}


def main() -> None:
    calls = json.loads(sys.stdin.read())
    if len({family(call) for call in calls}) > 1:
        raise SystemExit("one process runs the calls of one library: split them by family()")
    print(json.dumps([_run(call) for call in calls]))


if __name__ == "__main__":
    main()
