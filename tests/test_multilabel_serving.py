"""A multi-label ensemble, trained from examples/multilabel.yaml and served as a user would run it.

``ensemble train`` on the tickets CSV, then the local backend and the gateway as real processes,
then the test split's tickets as plain records over REST and as tensors over gRPC through the
gateway: the answer is the per-label probabilities the offline ensemble gave in training, and the
gateway's disagreement is the fraction of label decisions its members differ on.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest

from contracts import combine
from contracts.manifest import Manifest
from serving.protos import PredictionServiceStub, PredictRequest
from serving.tensors import from_tensor_proto, to_tensor_proto
from serving.testing import (
    GATEWAY_READY,
    free_port,
    gateway_args,
    gateway_env,
    spawn_process,
    stop_process,
    wait_ready,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]


@dataclass
class Served:
    run: Path
    manifest: Manifest
    backend_rest: int
    backend_grpc: int
    gateway_rest: int
    gateway_grpc: int
    records: list[dict[str, Any]]
    """The test split's tickets, as a user writes them."""
    offline: np.ndarray
    """The offline ensemble's answer on them: the members' test predictions, combined with the weights."""


def _offline_ensemble(run: Path, manifest: Manifest) -> tuple[list[dict[str, Any]], np.ndarray]:
    from contracts.run_layout import RunLayout
    from training.assemble import load_members
    from training.data import prepare
    from training.layout import load_config

    layout = RunLayout(run)
    config = load_config(layout)
    dataset = prepare(config.data, config.seed)
    members = {m.name: m for m in load_members(layout, config.candidate_count)}
    answers = [members[ref.name].test for ref in manifest.members]
    weights = combine.method_weights(manifest.combiner.method, manifest.weights)
    offline = combine.combine_outputs(answers, weights)["probabilities"]
    columns = [c for group in dataset.inputs for c in group.columns]
    part = dataset.frame.iloc[dataset.test_rows][columns]
    return orjson.loads(part.to_json(orient="records")), offline


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("multilabel")
    trained = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--config", "examples/multilabel.yaml",
         "--members", "2", "--epochs", "4", "--workers", "1", "--out", str(root / "run"), "--no-track"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    assert "tags: per label, test split" in trained.stdout
    manifest = Manifest.load(root / "run" / "ensemble.json")
    records, offline = _offline_ensemble(root / "run", manifest)
    ports = [free_port() for _ in range(4)]
    backend = spawn_process(
        ["-m", "cli", "backend", f"--port={ports[1]}", f"--rest_api_port={ports[0]}",
         "--host=127.0.0.1", f"--model_config_file={root / 'run' / 'models' / 'models.config'}"]
    )  # fmt: skip
    address = f"127.0.0.1:{ports[1]}"
    gateway = spawn_process(
        gateway_args(
            root / "run" / "ensemble.json", {m.name: address for m in manifest.members}, ports[2], ports[3]
        ),
        env=gateway_env(),
    )
    try:
        wait_ready(backend, "gRPC on", timeout_s=300)
        wait_ready(gateway, GATEWAY_READY)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{ports[2]}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.5)
        rest, grpc_port, gateway_rest, gateway_grpc = ports
        yield Served(root / "run", manifest, rest, grpc_port, gateway_rest, gateway_grpc, records, offline)
    finally:
        stop_process(gateway)
        stop_process(backend)


def test_the_manifest_says_multilabel_with_the_label_columns(served: Served) -> None:
    (output,) = served.manifest.outputs
    assert (output.name, output.kind, output.target, output.shape) == (
        "probabilities",
        "multilabel",
        "tags",
        [-1, 3],
    )
    assert output.classes == ["urgent", "billing", "refund"]
    assert served.offline.shape == (len(served.records), 3)


def test_rest_through_the_gateway_answers_the_offline_ensemble(served: Served) -> None:
    url = f"http://127.0.0.1:{served.gateway_rest}/v1/models/{served.manifest.name}:predict"
    response = httpx.post(url, content=orjson.dumps({"instances": served.records}), timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], served.offline, atol=1e-5)


def test_grpc_through_the_gateway_answers_the_offline_ensemble(served: Served) -> None:
    request = PredictRequest()
    request.model_spec.name = served.manifest.name
    for spec in served.manifest.inputs:
        values = [record[spec.name] for record in served.records]
        array = (
            np.array([str(v).encode() for v in values], dtype=object)
            if spec.dtype == "string"
            else np.array(values, dtype=np.float32)
        )
        request.inputs[spec.name].CopyFrom(to_tensor_proto(array))
    with grpc.insecure_channel(f"127.0.0.1:{served.gateway_grpc}") as channel:
        answer = PredictionServiceStub(channel).Predict(request, timeout=60)
    np.testing.assert_allclose(from_tensor_proto(answer.outputs["probabilities"]), served.offline, atol=1e-5)


def _disagreement_sum(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = re.search(r"^ensemble_disagreement_sum\S* (\S+)$", text, re.MULTILINE)
    count = re.search(r"^ensemble_disagreement_count\S* (\S+)$", text, re.MULTILINE)
    assert total is not None
    assert count is not None
    return float(total.group(1)), float(count.group(1))


def test_the_disagreement_is_the_fraction_of_label_decisions_members_differ_on(served: Served) -> None:
    """One request's disagreement, read off the gateway's histogram, against the members' own answers."""
    records = served.records[:8]
    body = orjson.dumps({"instances": records})
    members = []
    for ref in served.manifest.members:
        url = f"http://127.0.0.1:{served.backend_rest}/v1/models/{ref.name}:predict"
        response = httpx.post(url, content=body, timeout=60)
        assert response.status_code == 200, response.text
        members.append(np.asarray(response.json()["predictions"]))
    weights = combine.method_weights(served.manifest.combiner.method, served.manifest.weights)
    ensemble = combine.weighted_mean(np.stack(members), weights)
    differs = [np.mean((m >= 0.5) != (ensemble >= 0.5)) for m in members]
    expected = float(np.dot(weights, differs))

    before, seen = _disagreement_sum(served.gateway_rest)
    url = f"http://127.0.0.1:{served.gateway_rest}/v1/models/{served.manifest.name}:predict"
    assert httpx.post(url, content=body, timeout=60).status_code == 200
    after, counted = _disagreement_sum(served.gateway_rest)
    assert counted == seen + 1
    assert after - before == pytest.approx(expected, abs=1e-9)
