"""What the demo asks its running services: whether they are ready, and predictions over REST and gRPC.

The test rows are prepared from the demo training's own config, exactly as training split them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST ``body`` (GET when None) to ``url``: the status, the JSON document and the headers."""
    import httpx

    response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=10)
    return response.status_code, response.json(), dict(response.headers)


def backend_ready(rest_port: int, members: list[str]) -> bool:
    """Whether the backend's REST API reports a version of every member AVAILABLE."""
    for member in members:
        status, doc, _ = http_json(f"http://127.0.0.1:{rest_port}/v1/models/{member}")
        states = [v.get("state") for v in doc.get("model_version_status", [])] if status == 200 else []
        if "AVAILABLE" not in states:
            return False
    return True


def gateway_ready(rest_port: int) -> bool:
    """Whether the gateway's ``/readyz`` answers 200."""
    import httpx

    return httpx.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=2).status_code == 200


@dataclass
class TestRows:
    """The test split as a client sends it: served input shapes, true labels, class names."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    classes: list[str]


def load_test_rows(out_dir: Path) -> TestRows:
    """The test rows of the training in ``out_dir``, prepared from its config as training did."""
    from contracts.run_layout import RunLayout
    from training.config import load_config
    from training.data import prepare

    config = load_config(RunLayout(out_dir).config)
    dataset = prepare(config.data, config.seed)
    target = dataset.targets[0]
    labels = dataset.labels(dataset.test_rows)[dataset.output_name(target)]
    # Sent as a client writes them: in the served shapes (a single column is one value a row).
    features = dataset.features(dataset.test_rows)
    served = {g.name: features[g.name].reshape([-1, *g.shape[1:]]) for g in dataset.inputs}
    return TestRows(served, labels, list(target.classes))


def grpc_predict_all(
    grpc_port: int, ensemble: str, rows: TestRows, batch: int = 64
) -> tuple[np.ndarray, list[float]]:
    """``ensemble``'s probabilities for every row over gRPC, ``batch`` rows a call; each call's ms."""
    import grpc

    from serving.protos import PredictionServiceStub, PredictRequest
    from serving.tensors import from_tensor_proto, to_tensor_proto

    n = len(rows.labels)
    predictions: list[np.ndarray] = []
    latencies_ms: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = PredictionServiceStub(channel)
        for start in range(0, n, batch):
            request = PredictRequest()
            request.model_spec.name = ensemble
            request.model_spec.signature_name = "serving_default"
            for name, array in rows.features.items():
                request.inputs[name].CopyFrom(to_tensor_proto(array[start : start + batch]))
            began = time.perf_counter()
            response = stub.Predict(request, timeout=10)
            latencies_ms.append((time.perf_counter() - began) * 1000)
            predictions.append(from_tensor_proto(response.outputs["probabilities"]))
    return np.concatenate(predictions), latencies_ms
