"""Our ``open_inference_grpc.proto`` is wire-compatible with the one tritonclient and the KServe SDK use."""

from __future__ import annotations

from typing import Any

import pytest

from serving.protos.inference import open_inference_grpc_pb2
from tests.serving.oip.conftest import RunClients

pytestmark = pytest.mark.slow  # builds the client environment on first use


def _ours() -> dict[str, Any]:
    messages: dict[str, Any] = {}

    def fields(descriptor: Any, prefix: str) -> None:
        messages[prefix + descriptor.name] = {
            field.name: [
                field.number,
                field.type,
                field.is_repeated,
                field.message_type.full_name if field.message_type else "",
            ]
            for field in descriptor.fields
        }
        for nested in descriptor.nested_types:
            fields(nested, prefix + descriptor.name + ".")

    for message in open_inference_grpc_pb2.DESCRIPTOR.message_types_by_name.values():
        fields(message, "")
    service = open_inference_grpc_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return {"messages": messages, "methods": methods}


def test_every_message_and_method_matches_both_clients(run_clients: RunClients) -> None:
    triton, kserve = run_clients(
        [{"op": "wire", "client": "triton_grpc"}, {"op": "wire", "client": "kserve_grpc"}]
    )
    theirs = {"triton": triton, "kserve": kserve}
    ours = _ours()
    assert open_inference_grpc_pb2.DESCRIPTOR.package == "inference"
    assert set(ours["methods"]) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    for client in ("triton", "kserve"):
        for method, types in ours["methods"].items():
            assert theirs[client]["methods"][method] == types, (client, method)
        for message, fields in ours["messages"].items():
            their_fields = theirs[client]["messages"][message]
            for name, spec in fields.items():
                if (
                    client == "kserve"
                    and message == "InferParameter"
                    and name in ("double_param", "uint64_param")
                ):
                    assert name not in their_fields  # Triton's additions: KServe's proto predates them
                    continue
                assert their_fields[name] == spec, (client, message, name)
            assert set(their_fields) <= set(fields), (client, message, "fields we do not declare")
