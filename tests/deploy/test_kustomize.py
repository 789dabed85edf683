"""The kustomize overlays render, validate strictly, and hold the security and placement rules.

Built-in kinds go through ``kubernetes-validate --strict``; the Prometheus Operator's custom
resources (no schema there) go through the vendored CRD schemas in ``schemas/``, made strict.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import (
    INSTALL_HINT,
    KUBERNETES_VERSION,
    OVERLAYS,
    SCHEMAS,
    by_kind,
    container,
    containers,
    find_tool,
    is_custom_resource,
    kubectl_problem,
    pod_spec,
    render,
)

pytestmark = pytest.mark.skipif(kubectl_problem() is not None, reason=kubectl_problem() or "")

COMMON_LABELS = {"app.kubernetes.io/part-of": "tf-ensemble", "app.kubernetes.io/managed-by": "kustomize"}
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")
GPU = "nvidia.com/gpu"


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to unknown ones."""
    if isinstance(schema, dict):
        out = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    return jsonschema.Draft4Validator(closed(schema))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_common_labels_and_namespace(overlay: str) -> None:
    objects = render(overlay)
    assert objects, f"k8s/{overlay} rendered nothing"
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert len(namespaces) == 1, f"one namespace for every object: {namespaces}"
    assert None not in namespaces
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for key, value in COMMON_LABELS.items():
            assert labels.get(key) == value, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}={value}"
        spec = pod_spec(obj)
        if spec is not None:
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert COMMON_LABELS.items() <= template_labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict_accepts_every_builtin_object(overlay: str, tmp_path: Path) -> None:
    tool = find_tool("kubernetes-validate")
    if tool is None:
        pytest.skip(f"kubernetes-validate not found: {INSTALL_HINT['kubernetes-validate']}")
    builtin = [o for o in render(overlay) if not is_custom_resource(o)]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    result = subprocess.run(
        [tool, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Guards the check above: a typo in a manifest must fail it."""
    tool = find_tool("kubernetes-validate")
    if tool is None:
        pytest.skip(f"kubernetes-validate not found: {INSTALL_HINT['kubernetes-validate']}")
    gateway = copy.deepcopy(by_kind(render("overlays/dev"), "Deployment")["gateway"])
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(gateway))
    result = subprocess.run(
        [tool, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_custom_resources_match_the_vendored_crd_schemas() -> None:
    objects = render("overlays/prod")
    custom = [o for o in objects if is_custom_resource(o)]
    assert {o["kind"] for o in custom} == {"ServiceMonitor", "PrometheusRule"}
    for obj in custom:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        errors = [e.message for e in crd_validator(obj["kind"]).iter_errors(obj)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
    # A misspelt field must not slip through the closed schema.
    monitor = copy.deepcopy(by_kind(custom, "ServiceMonitor")["gateway"])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(crd_validator("ServiceMonitor").iter_errors(monitor))


def test_custom_resources_only_where_the_operator_is_expected() -> None:
    assert not [o for o in render("overlays/dev") if is_custom_resource(o)], "dev must not need the operator"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_restricted_and_has_requests_and_limits(overlay: str) -> None:
    for obj in workloads(render(overlay)):
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert spec is not None
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert isinstance(pod_security.get("runAsUser"), int), where
        assert pod_security["runAsUser"] > 0, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(spec):
            here = f"{where} container {c['name']}"
            security = c.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, here
            assert security.get("allowPrivilegeEscalation") is False, here
            assert security.get("capabilities", {}).get("drop") == ["ALL"], here
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{here} lacks {kind}"
            assert ":" in c["image"], f"{here}: pin the image tag"
            assert not c["image"].endswith(":latest"), f"{here}: pin the image tag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_pods_have_requests_equal_to_limits(overlay: str) -> None:
    for obj in workloads(render(overlay)):
        spec = pod_spec(obj)
        assert spec is not None
        if not any(GPU in c.get("resources", {}).get("limits", {}) for c in containers(spec)):
            continue
        for c in containers(spec):
            resources = c["resources"]
            assert resources["requests"] == resources["limits"], f"{obj['metadata']['name']}/{c['name']}"
        assert any(t.get("key") == GPU for t in spec.get("tolerations", [])), obj["metadata"]["name"]
        assert spec.get("nodeSelector"), obj["metadata"]["name"]


def test_dev_is_cpu_only_with_one_replica_each() -> None:
    objects = render("overlays/dev") + render("overlays/dev/training")
    for obj in workloads(objects):
        spec = pod_spec(obj)
        assert spec is not None
        for c in containers(spec):
            assert GPU not in json.dumps(c.get("resources", {})), f"{obj['metadata']['name']} asks for a GPU"
            assert not c["image"].endswith("-gpu"), c["image"]
    for name, deployment in by_kind(objects, "Deployment").items():
        assert deployment["spec"].get("replicas", 1) == 1, name
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    assert not by_kind(objects, "PodDisruptionBudget")


def test_prod_runs_gpu_backends_with_autoscaling() -> None:
    objects = render("overlays/prod")
    serving = by_kind(objects, "Deployment")["tf-serving"]
    tf_serving = container(serving, "tf-serving")
    assert tf_serving["image"].startswith("tensorflow/serving:")
    assert tf_serving["image"].endswith("-gpu")
    assert tf_serving["resources"]["limits"][GPU] == 1
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"gateway", "tf-serving"}
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert set(by_kind(objects, "PodDisruptionBudget")) == {"gateway", "tf-serving"}
    members = by_kind(render("overlays/prod/training"), "Job")["train-members"]
    assert container(members, "train-member")["resources"]["limits"][GPU] == 1


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_backends_accept_only_the_gateway_and_the_sync(overlay: str) -> None:
    objects = render(overlay)
    policy = by_kind(objects, "NetworkPolicy")["tf-serving"]
    backend_labels = by_kind(objects, "Deployment")["tf-serving"]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= backend_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
    assert sources, "an ingress rule without 'from' admits everyone"
    selected = [peer["podSelector"]["matchLabels"] for peer in sources]
    assert all(set(peer) == {"podSelector"} for peer in sources), "no namespace or IP-block peers"
    gateway_labels = by_kind(objects, "Deployment")["gateway"]["spec"]["template"]["metadata"]["labels"]
    assert any(sel.items() <= gateway_labels.items() for sel in selected)
    assert {"app.kubernetes.io/component": "registry-sync"} in selected
    assert len(selected) == 2


def test_monitoring_component_hpa_option_renders(tmp_path: Path) -> None:
    """The documented custom-metric HPA option composes with the prod overlay."""
    kubectl = find_tool("kubectl")
    assert kubectl is not None
    k8s = Path(__file__).resolve().parents[2] / "k8s"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths to other kustomizations.
                "resources": [os.path.relpath(k8s / "overlays" / "prod", tmp_path)],
                "components": [os.path.relpath(k8s / "components" / "hpa-in-flight", tmp_path)],
            }
        )
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    hpa = by_kind(list(yaml.safe_load_all(result.stdout)), "HorizontalPodAutoscaler")["gateway"]
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods_metric["pods"]["metric"]["name"] == "ensemble_in_flight_requests"


EXTERNAL_SECRETS = {"gateway-auth": {"token"}, "mlflow-database": {"uri"}}
"""Secrets prod expects to exist already (docs/deploy.md says how to create them)."""


def references(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(kind, name) → keys, for every Secret, ConfigMap and PVC the pods refer to."""
    refs: dict[tuple[str, str], set[str]] = {}
    for obj in workloads(objects):
        spec = pod_spec(obj)
        assert spec is not None
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                refs.setdefault(
                    ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]), set()
                )
            if "configMap" in volume:
                refs.setdefault(("ConfigMap", volume["configMap"]["name"]), set())
        for c in containers(spec):
            for source in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        refs.setdefault((kind, source[key]["name"]), set())
            for var in c.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = var.get("valueFrom", {}).get(key)
                    if ref:
                        refs.setdefault((kind, ref["name"]), set()).add(ref["key"])
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_or_is_a_documented_external_secret(overlay: str) -> None:
    objects = render(overlay)
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    missing: dict[str, set[str]] = {}
    for (kind, name), keys in references(objects).items():
        obj = rendered.get((kind, name))
        if obj is None:
            assert kind == "Secret", f"{overlay}: {kind}/{name} is referenced but not rendered"
            missing[name] = keys
            continue
        data = set(obj.get("data", {})) | set(obj.get("stringData", {}))
        assert keys <= data, f"{overlay}: {kind}/{name} lacks keys {keys - data}"
    if overlay.partition("+")[0] == "overlays/prod":
        assert missing == EXTERNAL_SECRETS
    elif overlay == "overlays/prod/training":
        # The member pods share the search's Optuna study in MLflow's PostgreSQL: same Secret.
        assert missing == {"mlflow-database": EXTERNAL_SECRETS["mlflow-database"]}
    else:
        assert not missing, f"{overlay} must run without anything created by hand: {missing}"
