"""TF Serving's official Python client (``tensorflow-serving-api``) against a server, unchanged.

``python -m tests.serving.gateway.official_client HOST:PORT MODEL`` reads ``{"x": rows}`` on
stdin, calls Predict, GetModelMetadata and GetModelStatus the way a TF Serving user would, and
prints a JSON summary. It runs in its own process: it imports TensorFlow, the gateway must not.
"""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def main() -> None:
    address, model = sys.argv[1], sys.argv[2]
    inputs = json.loads(sys.stdin.read())
    channel = grpc.insecure_channel(address)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(values, dtype=np.float32)))
    response, call = predictions.Predict.with_call(request, timeout=30)
    outputs = {name: tf.make_ndarray(tensor).tolist() for name, tensor in response.outputs.items()}

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = model
    meta_request.metadata_field.append("signature_def")
    meta = predictions.GetModelMetadata(meta_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = model
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)

    print(
        json.dumps(
            {
                "outputs": outputs,
                "version": response.model_spec.version.value,
                "trailing": dict(call.trailing_metadata() or ()),
                "signature_inputs": sorted(signatures.signature_def["serving_default"].inputs),
                "status": [(s.version, s.state) for s in status.model_version_status],
            }
        )
    )


if __name__ == "__main__":
    main()
