#!/usr/bin/env bash
# Validate the deployment files offline, as CI does: render every kustomize overlay into
# build/k8s/ (to read or diff), then run the deployment tests (strict schema validation, CRD
# schemas, hadolint, yamllint, compose schema, drift against the code).
#   tools/validate_deploy.sh            # uses .venv/bin/python
#   PYTHON=python3 tools/validate_deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
out=build/k8s
mkdir -p "$out"
if command -v kubectl >/dev/null 2>&1; then
  for overlay in overlays/dev overlays/prod overlays/dev/training overlays/prod/training; do
    kubectl kustomize "k8s/$overlay" >"$out/${overlay//\//-}.yaml"
    echo "rendered k8s/$overlay -> $out/${overlay//\//-}.yaml"
  done
else
  echo "kubectl not found: the kustomize tests will skip" >&2
fi
exec "$python" -m pytest -q tests/deploy "$@"
