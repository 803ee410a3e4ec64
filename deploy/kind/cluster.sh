#!/usr/bin/env bash
# `make kind-up` / `make kind-down`: the kind cluster and local registry of
# deploy/kind/cluster.yaml, created or deleted through ctlptl. Stops with a
# message naming each missing tool and where to get it.
#   deploy/kind/cluster.sh up|down
set -euo pipefail
cd "$(dirname "$0")/../.."

CONFIG=deploy/kind/cluster.yaml
CONTEXT=kind-catalog
# The versions the README states; others usually work, but these are the ones the config was written for.
KIND_VERSION=v0.31.0
CTLPTL_VERSION=0.9.3

say() { printf 'kind: %s\n' "$*" >&2; }

usage() { say "usage: $0 up|down"; exit 2; }
[ $# -eq 1 ] || usage

missing=0
need() {
  # need TOOL HOW-TO-GET-IT
  if ! command -v "$1" >/dev/null 2>&1; then
    say "missing: $1 ($2)"
    missing=1
  fi
}
need docker "Docker Engine or Docker Desktop: https://docs.docker.com/engine/install/"
need kind "kind $KIND_VERSION: https://kind.sigs.k8s.io/docs/user/quick-start/#installation, or: go install sigs.k8s.io/kind@$KIND_VERSION"
need ctlptl "ctlptl v$CTLPTL_VERSION: https://github.com/tilt-dev/ctlptl#how-do-i-install-it, or: go install github.com/tilt-dev/ctlptl/cmd/ctlptl@v$CTLPTL_VERSION"
need kubectl "kubectl v1.35: https://kubernetes.io/docs/tasks/tools/#kubectl"
if [ "$missing" -ne 0 ]; then
  say "install the tools above, then run this again"
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  say "docker is installed but its daemon does not answer (docker info failed): start Docker, then run this again"
  exit 1
fi

case "$1" in
  up)
    version=$(kind version 2>/dev/null || true)   # "kind v0.31.0 go1.25.5 linux/amd64"
    version=${version#kind }
    version=${version%% *}
    [ "$version" = "$KIND_VERSION" ] || say "note: kind $version found; the node image in $CONFIG was made for kind $KIND_VERSION"
    ctlptl apply -f "$CONFIG"
    kubectl --context "$CONTEXT" wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
    registry=$(ctlptl get cluster "$CONTEXT" -o template --template '{{.status.localRegistryHosting.host}}')
    say "ready: kubectl context $CONTEXT, image registry $registry; next: tilt up"
    ;;
  down)
    ctlptl delete -f "$CONFIG"
    ;;
  *)
    usage
    ;;
esac
