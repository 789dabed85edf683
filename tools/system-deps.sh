#!/usr/bin/env bash
# Install the system programs the end-to-end tests start for real, where they are missing:
# PostgreSQL (MLflow's production store), Prometheus (scrapes the gateway) and kubectl (renders
# the kustomize overlays). Needs root (or sudo) and Debian's apt; where a program cannot be
# installed, this says so and the tests that need it skip with that reason.
set -uo pipefail

has_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
missing=()
has_postgres || missing+=(postgresql)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install ${missing[*]} yourself (tests that need them will skip)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
  else
    echo "system-deps: not root; install ${missing[*]} yourself (tests that need them will skip)" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q || echo "system-deps: apt-get update failed" >&2
installable=()
for pkg in "${missing[@]}"; do
  if apt-cache show "$pkg" >/dev/null 2>&1; then
    installable+=("$pkg")
  else
    echo "system-deps: no package '$pkg' in the apt index; install it yourself (tests that need it will skip)" >&2
  fi
done
if [ "${#installable[@]}" -gt 0 ]; then
  $sudo apt-get install -y -q --no-install-recommends "${installable[@]}" \
    || echo "system-deps: could not install ${installable[*]}" >&2
fi
exit 0
