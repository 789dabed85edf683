#!/usr/bin/env bash
# Install the system programs the end-to-end tests start for real, where they are missing:
# PostgreSQL (MLflow's production store), Prometheus (scrapes the gateway), kubectl (kustomize).
# Needs root (or sudo) and Debian's apt; elsewhere it says what is missing and the tests that need
# a missing program skip with that reason.
set -euo pipefail

packages=(postgresql prometheus kubectl)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
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
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
