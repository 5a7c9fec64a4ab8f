#!/usr/bin/env bash
# Inputs for building the project image without a registry: a wheelhouse of every Python
# package the project needs (from this machine's pip, which reaches the package index or a
# mirror), and a Debian 12 base image made with debootstrap when none is present.
#   deploy/prepare-offline.sh [BASE_IMAGE]     (default: mergerec-base:bookworm)
# then: BASE_IMAGE=mergerec-base:bookworm PIP_SOURCE=wheelhouse docker compose build
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-mergerec-base:bookworm}
if [ -z "$(ls deploy/wheelhouse/*.whl 2>/dev/null)" ]; then
  echo "wheelhouse: downloading the project's dependencies into deploy/wheelhouse"
  python3 -m pip download --quiet --dest deploy/wheelhouse .
else
  echo "wheelhouse: deploy/wheelhouse already holds $(ls deploy/wheelhouse/*.whl | wc -l) wheels"
fi
if docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "base image: $BASE already present"
else
  command -v debootstrap >/dev/null || { echo "error: debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "base image: debootstrap --variant=minbase bookworm (a few minutes)"
  debootstrap --variant=minbase bookworm "$root" >/dev/null
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  echo "base image: $BASE imported"
fi
