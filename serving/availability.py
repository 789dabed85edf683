"""Asking a TF Serving backend whether a model version is AVAILABLE, over its gRPC ModelService.

The registry sync keeps an old version until the new one is AVAILABLE on the backend it feeds; it
takes this check as a plain callable (``registry.sync.AvailableFn``), which the command line builds
here, so that the registry needs no part of serving.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from serving.protos import GetModelStatusRequest, ModelServiceStub, ModelVersionStatus


def backend_availability(address: str, timeout_s: float = 2.0) -> Callable[[str, int], bool]:
    """Ask TF Serving at ``address`` (gRPC ``HOST:PORT``) whether a model version is AVAILABLE."""
    stub = ModelServiceStub(grpc.insecure_channel(address))
    available_state = ModelVersionStatus.State.Value("AVAILABLE")

    def available(model: str, version: int) -> bool:
        request = GetModelStatusRequest()
        request.model_spec.name = model
        request.model_spec.version.value = version
        try:
            response = stub.GetModelStatus(request, timeout=timeout_s)
        except grpc.RpcError:
            return False  # down, or the version unknown: not AVAILABLE, so keep the old one
        return any(s.version == version and s.state == available_state for s in response.model_version_status)

    return available
