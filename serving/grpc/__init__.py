"""TF Serving's gRPC API as thin grpc.aio servicers onto a ``serving.core.ServingCore``.

``add_tfs_servicers(server, core)`` adds ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED) and ``ModelService``
(GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED). ``add_health_and_reflection``
adds the standard ``grpc.health.v1`` service and server reflection. ``DecodeGuard`` answers request
bytes that are not a valid message with INVALID_ARGUMENT instead of grpc's UNKNOWN.
"""

from __future__ import annotations

from serving.grpc.servicers import (
    DecodeGuard,
    ModelServicer,
    PredictionServicer,
    add_health_and_reflection,
    add_tfs_servicers,
    model_ref,
    refuse_undecodable,
    tolerant_deserializer,
)

__all__ = [
    "DecodeGuard",
    "ModelServicer",
    "PredictionServicer",
    "add_health_and_reflection",
    "add_tfs_servicers",
    "model_ref",
    "refuse_undecodable",
    "tolerant_deserializer",
]
