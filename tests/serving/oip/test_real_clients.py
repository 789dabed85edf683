"""tritonclient and the KServe SDK, unchanged, against real gateways and local backends.

Two deployments, as real processes on free ports:

* ``ensemble demo`` (digits: one FP32 input), as a new user starts it: trained, registered under
  ``champion`` in a local MLflow store, synced, served by the local backend behind the gateway;
* a penguins ensemble (FP32 and BYTES inputs) served from its manifest file, with the members'
  versions also labelled ``champion`` on the local backend.

Every answer is checked against the TF Serving API's answer for the same rows, to 1e-6. The
clients run in their own environment (``client_venv.py``), one process per library and test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from contracts.manifest import Manifest
from contracts.model_config import ModelEntry, write_model_config
from serving.testing import (
    GATEWAY_READY,
    free_port,
    gateway_args,
    gateway_env,
    spawn_process,
    stop_process,
    wait_ready,
)
from tests.conftest import REPO_ROOT
from tests.serving.oip.conftest import RunClients

pytestmark = pytest.mark.slow

ROWS = 3


@dataclass
class Stack:
    """A gateway (and the local backend behind it) serving ``manifest``."""

    manifest: Manifest
    version: str
    """The version the gateway answers as (the registry's version of the manifest)."""
    rest: int
    grpc: int
    backend_rest: int
    backend_grpc: int
    root: Path | None = None
    """The demo's folder (its MLflow store, runs/demo)."""
    proc: subprocess.Popen[str] | None = None
    """The demo's process, still printing."""

    def address(self, transport: str, *, backend: bool = False) -> str:
        if backend:
            return f"127.0.0.1:{self.backend_grpc if transport == 'grpc' else self.backend_rest}"
        return f"127.0.0.1:{self.grpc if transport == 'grpc' else self.rest}"


def _wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered 200")


_BACKEND_PORTS = re.compile(r"local backend \(gRPC (\d+), REST (\d+)\)")


def _served_version(rest: int, model: str) -> str:
    status = httpx.get(f"http://127.0.0.1:{rest}/v1/models/{model}", timeout=10).json()
    return str(status["model_version_status"][0]["version"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``ensemble demo`` serving until interrupted, in a folder of its own (its MLflow store too)."""
    root = tmp_path_factory.mktemp("demo")
    rest, grpc = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cli", "demo", "--members", "2", "--epochs", "3",
            "--out", str(root / "runs" / "demo"), "--rest-port", str(rest), "--grpc-port", str(grpc),
        ],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Ctrl-C is how the demo stops its services; a shell running these tests in the background
        # may have left SIGINT ignored, and the demo would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        lines = wait_ready(proc, "Serving until Ctrl-C", timeout_s=1500)
        ports = next(m for m in map(_BACKEND_PORTS.search, lines) if m)
        manifest = Manifest.load(root / "runs" / "demo" / "ensemble.json")
        version = _served_version(rest, manifest.name)
        yield Stack(manifest, version, rest, grpc, int(ports[2]), int(ports[1]), root, proc)
    finally:
        stop_process(proc, signal.SIGINT, timeout_s=60)


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    out = tmp_path_factory.mktemp("penguins")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from training.testing import train_tiny; "
            "train_tiny(sys.argv[1], 'penguins', members=2, epochs=2, extra={'assemble.weights': 'uniform'})",
            str(out),
        ],
        cwd=REPO_ROOT,
        check=True,
        timeout=1200,
        capture_output=True,
    )
    manifest = Manifest.load(out / "ensemble.json")
    config = out / "labelled.config"
    write_model_config(
        config,
        [
            ModelEntry(name=m.name, base_path=str(out / "models" / m.name), labels={"champion": m.version})
            for m in manifest.members
        ],
    )
    backend_grpc, backend_rest, rest, grpc = free_port(), free_port(), free_port(), free_port()
    backend = spawn_process(
        [
            "-m", "cli", "backend", f"--port={backend_grpc}", f"--rest_api_port={backend_rest}",
            "--host=127.0.0.1", f"--model_config_file={config}",
        ]
    )  # fmt: skip
    address = f"127.0.0.1:{backend_grpc}"
    gateway = spawn_process(
        gateway_args(out / "ensemble.json", {m.name: address for m in manifest.members}, rest, grpc),
        env=gateway_env(),
    )
    try:
        wait_ready(backend, "gRPC on", timeout_s=600)
        wait_ready(gateway, GATEWAY_READY)
        _wait_http(f"http://127.0.0.1:{rest}/readyz")
        yield Stack(manifest, _served_version(rest, manifest.name), rest, grpc, backend_rest, backend_grpc)
    finally:
        stop_process(gateway)
        stop_process(backend)


# --------------------------------------------------------------------------- inputs and answers


def _columns(manifest: Manifest, rows: int = ROWS) -> dict[str, np.ndarray]:
    """Plausible rows for the manifest's inputs: small integers for numbers, known words for strings."""
    rng = np.random.default_rng(7)
    words = ["Biscoe", "Dream", "Torgersen", "male", "female", ""]
    columns: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        shape = [rows, *(d if d > 0 else 1 for d in spec.shape[1:])]
        if spec.dtype == "string":
            columns[spec.name] = rng.choice(np.array(words, dtype=object), size=shape)
        else:
            columns[spec.name] = rng.integers(0, 16, size=shape).astype(spec.dtype)
    return columns


_DATATYPE = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "string": "BYTES"}


def _tensors(columns: dict[str, np.ndarray], **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "datatype": _DATATYPE["string" if array.dtype == object else array.dtype.name],
            "shape": list(array.shape),
            "data": array.reshape(-1).tolist(),
            **extra,
        }
        for name, array in columns.items()
    ]


def _tf_serving_answer(
    url: str, model: str, columns: dict[str, np.ndarray], path: str = ""
) -> dict[str, Any]:
    """The TF Serving API's answer (REST, columnar) for the same rows."""
    body = {"inputs": {name: array.tolist() for name, array in columns.items()}}
    response = httpx.post(
        f"http://{url}/v1/models/{model}{path}:predict", content=orjson.dumps(body), timeout=60
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    return outputs if isinstance(outputs, dict) else {"probabilities": outputs}


def _assert_answer(result: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    assert "error" not in result, (what, result)
    for name, value in expected.items():
        output = result["outputs"][name]
        got = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
        np.testing.assert_allclose(got, np.asarray(value), atol=1e-6, err_msg=what)
        assert output["datatype"] == "FP32", what


def _infer(client: str, url: str, model: str, inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"client": client, "url": url, "op": "infer", "model": model, "inputs": inputs, **extra}


# --------------------------------------------------------------------------- digits, the demo


def test_every_client_answers_as_the_tf_serving_api(demo: Stack, run_clients: RunClients) -> None:
    model = demo.manifest.name
    columns = _columns(demo.manifest)
    expected = _tf_serving_answer(demo.address("rest"), model, columns)
    http, grpc = demo.address("rest"), demo.address("grpc")
    calls = {
        "tritonclient.http, binary tensors": _infer("triton_http", http, model, _tensors(columns), id="t1"),
        "tritonclient.http, JSON tensors": _infer(
            "triton_http", http, model, _tensors(columns, binary=False),
            outputs=["probabilities"], binary_outputs=False,
        ),
        "tritonclient.grpc": _infer("triton_grpc", grpc, model, _tensors(columns), id="t2"),
        "KServe REST v2, JSON": _infer("kserve_rest", http, model, _tensors(columns, binary=False), id="k1"),
        "KServe REST v2, binary": _infer("kserve_rest", http, model, _tensors(columns, binary=True)),
        "KServe gRPC, raw contents": _infer("kserve_grpc", grpc, model, _tensors(columns, binary=True)),
        "KServe gRPC, typed contents": _infer("kserve_grpc", grpc, model, _tensors(columns, binary=False)),
    }  # fmt: skip
    results = dict(zip(calls, run_clients(list(calls.values())), strict=True))
    for what, result in results.items():
        _assert_answer(result, expected, what)
        # The KServe SDK's REST client drops model_version from the answers it decodes.
        assert result["model_version"] == ("" if what.startswith("KServe REST") else demo.version), what
        assert result["parameters"]["ensemble_members"] == "2/2", what
    assert results["tritonclient.http, binary tensors"]["id"] == "t1"
    assert results["tritonclient.grpc"]["id"] == "t2"
    assert results["KServe REST v2, JSON"]["id"] == "k1"
    assert results["tritonclient.http, binary tensors"]["binary"] == [True]
    assert results["tritonclient.http, JSON tensors"]["binary"] == [False]


def test_health_and_readiness_are_true_for_every_client(demo: Stack, run_clients: RunClients) -> None:
    model = demo.manifest.name
    calls = [
        {"client": client, "url": demo.address("grpc" if client.endswith("grpc") else "rest"),
         "op": "health", "model": model}
        for client in ("triton_http", "triton_grpc", "kserve_rest", "kserve_grpc", "kserve_v1")
    ]  # fmt: skip
    for call, result in zip(calls, run_clients(calls), strict=True):
        expected = {"live": True, "ready": True, "model_ready": True}
        if call["client"] == "kserve_v1":
            del expected["ready"]  # v1 has no server readiness
        assert result == expected, call["client"]


def test_metadata_describes_the_ensemble(demo: Stack, run_clients: RunClients) -> None:
    model = demo.manifest.name
    http, grpc = run_clients(
        [
            {"client": "triton_http", "url": demo.address("rest"), "op": "metadata", "model": model},
            {"client": "triton_grpc", "url": demo.address("grpc"), "op": "metadata", "model": model},
        ]
    )
    for result in (http, grpc):
        assert "binary_tensor_data" in result["server"]["extensions"]
        meta = result["model"]
        assert meta["name"] == model
        assert meta["platform"] == "ensemble"
        assert meta["versions"] == [demo.version]
        inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
        assert inputs == {s.name: (_DATATYPE[s.dtype], s.shape) for s in demo.manifest.inputs}
        assert [t["name"] for t in meta["outputs"]] == [s.name for s in demo.manifest.outputs]


def test_the_alias_is_a_version_string(demo: Stack, run_clients: RunClients) -> None:
    model = demo.manifest.name
    columns = _columns(demo.manifest)
    expected = _tf_serving_answer(demo.address("rest"), model, columns, "/labels/champion")
    http, grpc = demo.address("rest"), demo.address("grpc")
    version = demo.version
    results = run_clients(
        [
            _infer("triton_http", http, model, _tensors(columns), version="champion"),
            _infer("triton_grpc", grpc, model, _tensors(columns), version="champion"),
            _infer("kserve_grpc", grpc, model, _tensors(columns, binary=True), version="champion"),
            _infer("triton_http", http, model, _tensors(columns), version=version),
            _infer("triton_http", http, model, _tensors(columns), version="challenger"),
            _infer("triton_grpc", grpc, model, _tensors(columns), version="challenger"),
            {"client": "triton_http", "url": http, "op": "health", "model": model, "version": "champion"},
        ]
    )
    for result in results[:4]:
        _assert_answer(result, expected, "versions/champion")
        assert result["model_version"] == version
    assert results[4]["error"]["status"] == "404"
    assert "Unrecognized servable version label: challenger" in results[4]["error"]["message"]
    assert results[5]["error"]["status"] == "StatusCode.NOT_FOUND"
    assert results[6]["model_ready"] is True


def test_members_and_spread_through_request_parameters(demo: Stack, run_clients: RunClients) -> None:
    """Per-member outputs equal each member's own answer, asked of the local backend over v2 too."""
    model = demo.manifest.name
    columns = _columns(demo.manifest)
    members = [m.name for m in demo.manifest.members]
    calls = [
        _infer("triton_http", demo.address("rest"), model, _tensors(columns),
               parameters={"ensemble_detail": "members"}),
        _infer("kserve_grpc", demo.address("grpc"), model, _tensors(columns, binary=True),
               parameters={"ensemble_detail": "spread"}),
    ] + [
        _infer("triton_grpc", demo.address("grpc", backend=True), member, _tensors(columns))
        for member in members
    ]  # fmt: skip
    ensemble, spread, *own = run_clients(calls)
    assert "error" not in ensemble, ensemble
    assert set(ensemble["outputs"]) == {"probabilities", "probabilities:spread"} | {
        f"probabilities:{member}" for member in members
    }
    # The demo's gateway has a traffic policy for the ensemble, so answers also say which alias answered.
    assert ensemble["parameters"] == {
        "ensemble_members": "2/2",
        "ensemble_manifest_version": demo.version,
        "ensemble_alias": "champion",
    }
    for member, answer in zip(members, own, strict=True):
        through_gateway = ensemble["outputs"][f"probabilities:{member}"]
        expected = np.reshape(through_gateway["data"], through_gateway["shape"])
        _assert_answer(answer, {"probabilities": expected}, member)
        assert "parameters" not in answer or not answer["parameters"]  # the backend adds no extensions
    assert set(spread["outputs"]) == {"probabilities", "probabilities:spread"}


def test_bad_requests_are_4xx_or_invalid_argument_with_one_line(demo: Stack, run_clients: RunClients) -> None:
    model = demo.manifest.name
    columns = _columns(demo.manifest)
    name = demo.manifest.inputs[0].name
    float64 = {k: v.astype(np.float64) for k, v in columns.items()}
    as_float64 = _tensors(float64)
    as_strings = _tensors({k: v.astype(str).astype(object) for k, v in columns.items()})
    rows_too_many = [dict(t, send_shape=[ROWS + 1, *t["shape"][1:]]) for t in _tensors(columns, binary=False)]
    raw_rows_too_many = [dict(t, send_shape=[ROWS + 1, *t["shape"][1:]]) for t in _tensors(columns)]
    http, grpc = demo.address("rest"), demo.address("grpc")
    cases = [
        ("triton_http", http, as_float64, {}, "400", f"input '{name}' has datatype FP64, the model expects"),
        ("triton_grpc", grpc, as_float64, {}, "StatusCode.INVALID_ARGUMENT", "has datatype FP64"),
        ("kserve_rest", http, _tensors(float64, binary=False), {}, "400", "has datatype FP64"),
        ("triton_http", http, as_strings, {}, "400", f"input '{name}' has datatype BYTES, the model expects"),
        ("kserve_grpc", grpc, as_strings, {}, "INVALID_ARGUMENT", "has datatype BYTES, the model expects"),
        ("triton_http", http, rows_too_many, {}, "400", "values, the data has"),
        ("kserve_rest", http, rows_too_many, {}, "400", "values, the data has"),
        ("triton_grpc", grpc, raw_rows_too_many, {}, "StatusCode.INVALID_ARGUMENT", "bytes, got"),
        ("triton_http", http, _tensors(columns), {"outputs": ["nope"]}, "400",
         "alias not found in signature: nope"),
        ("triton_grpc", grpc, _tensors(columns), {"outputs": ["nope"]}, "StatusCode.INVALID_ARGUMENT",
         "alias not found in signature: nope"),
        ("kserve_grpc", grpc, _tensors(columns), {"outputs": ["nope"]}, "INVALID_ARGUMENT",
         "alias not found in signature"),
    ]  # fmt: skip
    results = run_clients(
        [_infer(client, url, model, inputs, **extra) for client, url, inputs, extra, *_ in cases]
    )
    for (client, _, _, _, status, message), result in zip(cases, results, strict=True):
        assert "error" in result, (client, message, result)
        assert result["error"]["status"] == status, (client, message, result)
        assert message in result["error"]["message"], (client, result)
        assert "\n" not in result["error"]["message"]
        assert "Traceback" not in result["error"]["message"]


# --------------------------------------------------------------------------- penguins: string inputs


def test_string_inputs_through_every_client(penguins: Stack, run_clients: RunClients) -> None:
    manifest = penguins.manifest
    assert {s.dtype for s in manifest.inputs} == {"float32", "string"}
    columns = _columns(manifest)
    expected = _tf_serving_answer(penguins.address("rest"), manifest.name, columns)
    http, grpc = penguins.address("rest"), penguins.address("grpc")
    calls = {
        "tritonclient.http, binary": _infer("triton_http", http, manifest.name, _tensors(columns)),
        "tritonclient.http, JSON": _infer(
            "triton_http", http, manifest.name, _tensors(columns, binary=False)
        ),
        "tritonclient.grpc": _infer("triton_grpc", grpc, manifest.name, _tensors(columns)),
        "KServe REST v2": _infer("kserve_rest", http, manifest.name, _tensors(columns, binary=False)),
        "KServe gRPC, raw": _infer("kserve_grpc", grpc, manifest.name, _tensors(columns, binary=True)),
        "KServe gRPC, bytes_contents": _infer(
            "kserve_grpc", grpc, manifest.name, _tensors(columns, binary=False)
        ),
    }
    for what, result in zip(calls, run_clients(list(calls.values())), strict=True):
        _assert_answer(result, expected, what)


def test_local_backend_speaks_v2_with_labels(penguins: Stack, run_clients: RunClients) -> None:
    member = penguins.manifest.members[0].name
    columns = _columns(penguins.manifest)
    expected = _tf_serving_answer(penguins.address("rest", backend=True), member, columns, "/labels/champion")
    http, grpc = penguins.address("rest", backend=True), penguins.address("grpc", backend=True)
    results = run_clients(
        [
            _infer("triton_http", http, member, _tensors(columns), version="champion"),
            _infer("triton_grpc", grpc, member, _tensors(columns), version="1"),
            _infer("kserve_rest", http, member, _tensors(columns, binary=False)),
            _infer("kserve_grpc", grpc, member, _tensors(columns, binary=False), version="champion"),
            {"client": "kserve_rest", "url": http, "op": "health", "model": member},
            {"client": "triton_grpc", "url": grpc, "op": "metadata", "model": member},
        ]
    )
    for result in results[:4]:
        _assert_answer(result, expected, member)
    assert [result["model_version"] for result in results[:4]] == ["1", "1", "", "1"]  # KServe REST: ""
    assert results[4] == {"live": True, "ready": True, "model_ready": True}
    meta = results[5]["model"]
    assert meta["platform"] == "tensorflow_savedmodel"
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {
        s.name: _DATATYPE[s.dtype] for s in penguins.manifest.inputs
    }


def _challenger_backend_pid(demo: Stack, timeout_s: float) -> int:
    """The pid of the backend the demo starts for the challenger (the demo prints it too)."""
    assert demo.root is not None
    repo = str(demo.root / "runs" / "demo" / "model-repo-challenger")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"backend" in args and any(repo.encode() in arg for arg in args):
                return int(cmdline.parent.name)
        time.sleep(0.5)
    raise AssertionError("the demo never started the challenger's backend")


def _predict(demo: Stack, user: str) -> httpx.Response:
    rows = [[float(v % 16) for v in range(64)]]
    return httpx.post(
        f"http://127.0.0.1:{demo.rest}/v1/models/{demo.manifest.name}:predict",
        json={"instances": rows},
        headers={"x-user-id": user},
        timeout=30,
    )


def test_zz_a_challenger_registered_while_the_demo_runs_is_shadowed_and_may_die(demo: Stack) -> None:
    """The issue's walk-through on the running demo (last: it registers a challenger)."""
    assert demo.root is not None
    name = demo.manifest.name
    trained = subprocess.run(
        [
            sys.executable, "-m", "cli", "train", "--data", "sklearn:digits", "--name", name,
            "--members", "1", "--epochs", "1", "--out", str(demo.root / "runs" / "challenger"),
            "--tracking-uri", "sqlite:///mlruns.db", "--register", "--alias", "challenger",
        ],
        cwd=demo.root, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    pid = _challenger_backend_pid(demo, timeout_s=300)
    comparison = f"http://127.0.0.1:{demo.rest}/v1/ensembles/{name}/comparison"

    # Shadow on with one setting in the demo's file, no restart.
    config = demo.root / "runs" / "demo" / "gateway.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["aliases"] == ["champion", "challenger"]
    settings["traffic"][name]["shadow_fraction"] = 1.0
    config.write_text(yaml.safe_dump(settings))

    def compared() -> int:
        response = _predict(demo, "someone")
        assert response.status_code == 200, response.text
        assert response.headers["x-ensemble-alias"] == "champion"
        return int(httpx.get(comparison, timeout=10).json()["compared"])

    deadline = time.monotonic() + 300
    while compared() < 5:
        assert time.monotonic() < deadline, "the challenger was never shadowed"
        time.sleep(0.2)
    summary = httpx.get(comparison, timeout=10).json()
    assert (summary["champion"]["version"], summary["challenger"]["version"]) == (1, 2)
    assert summary["classification"]["agreement"] is not None

    # The challenger's backend dies: not one champion request fails.
    os.kill(pid, signal.SIGKILL)
    for i in range(20):
        response = _predict(demo, f"user-{i}")
        assert response.status_code == 200, response.text
        assert response.headers["x-ensemble-alias"] == "champion"
