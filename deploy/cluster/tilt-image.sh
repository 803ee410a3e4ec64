#!/usr/bin/env bash
# The Tiltfile's image build on the cluster of `make cluster` (its custom_build command):
# builds the Dockerfile's `dev` target with deploy/local/image.sh (`make image`) and
# imports it into the node's containerd, where the pods find it (the cluster has no
# registry and pulls nothing).
#
#   deploy/cluster/tilt-image.sh IMAGE_REF       (Tilt passes $EXPECTED_REF, e.g. catalog:tilt-build-1765...)
#
# Environment (deploy/cluster/tilt.py sets all three for `make tilt`):
#   DOCKER_HOST                  the Docker engine to build with (default: docker's own default)
#   CATALOG_IMAGE_BUILD_ARGS     extra build arguments, e.g. the stand-in base images:
#                                "--build-arg PYTHON_IMAGE=... --build-arg UV_IMAGE=..."
#   CATALOG_CLUSTER_CONTAINERD   the node's containerd socket (default /run/catalog-cluster/containerd/containerd.sock)
set -euo pipefail
cd "$(dirname "$0")/../.."

[ $# -eq 1 ] || { echo "usage: $0 IMAGE_REF" >&2; exit 2; }
ref=$1
socket=${CATALOG_CLUSTER_CONTAINERD:-/run/catalog-cluster/containerd/containerd.sock}
ctr="$(bash deploy/cluster/build.sh --print-bin containerd)/ctr"
[ -x "$ctr" ] || { echo "tilt-image: no $ctr: run \`make cluster\` first" >&2; exit 1; }
[ -S "$socket" ] || { echo "tilt-image: no containerd at $socket: is \`make cluster\` running?" >&2; exit 1; }

start=$SECONDS
# shellcheck disable=SC2086  # CATALOG_IMAGE_BUILD_ARGS is a list of words on purpose
IMAGE=$ref bash deploy/local/image.sh --target dev ${CATALOG_IMAGE_BUILD_ARGS:-}
built=$SECONDS
# docker save names the image docker.io/library/catalog:...: the name the kubelet
# resolves the pod's "catalog:..." to.
docker save "$ref" | "$ctr" --address "$socket" --namespace k8s.io images import --local -
# The engine keeps only the newest build of this repository's images (each live-update
# fallback would otherwise leave one more behind); containerd keeps the ones pods use.
docker image ls --format '{{.Repository}}:{{.Tag}}' "${ref%%:*}" | grep -v -x -F "$ref" | grep ':tilt-' |
  xargs -r docker image rm >/dev/null 2>&1 || true
echo "tilt-image: $ref built in $((built - start)) s, imported into containerd in $((SECONDS - built)) s"
