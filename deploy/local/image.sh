#!/usr/bin/env bash
# Builds the image from the Dockerfile: `make image` (IMAGE=catalog:dev by default).
# Arguments are passed to the build, e.g. base images from a mirror:
#   make image IMAGE=registry.example.com/catalog:1.0.0 \
#     BUILD_ARGS="--build-arg PYTHON_IMAGE=mirror.example.com/python:3.11.13-slim-bookworm"
#
# Engine: docker, or podman when that is what is installed (CONTAINER_ENGINE=docker|podman
# chooses). The Dockerfile caches uv's downloads with `RUN --mount=type=cache`, which needs
# BuildKit: docker's buildx plugin, or a docker client older than 23, which has BuildKit built in
# (Debian 12's docker.io). The build runs on the host's network (--network host): it only
# downloads packages, and needs no bridge network or NAT rules on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-catalog:dev}
say() { printf 'image: %s\n' "$*" >&2; }

builder=()
pick_docker() {
  local client version
  while read -r client; do
    if "$client" buildx version >/dev/null 2>&1; then
      builder=("$client" build)
      return 0
    fi
    version=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [[ $version =~ ^(1[0-9]|2[0-2])\. ]]; then
      builder=(env DOCKER_BUILDKIT=1 "$client" build)
      return 0
    fi
  done < <(type -ap docker)
  return 1
}

case "${CONTAINER_ENGINE:-}" in
  podman) builder=(podman build) ;;
  docker) pick_docker || { say "no docker client with BuildKit: install the buildx plugin (docker-buildx)"; exit 1; } ;;
  "")
    if command -v docker >/dev/null 2>&1; then
      pick_docker || { say "no docker client with BuildKit: install the buildx plugin (docker-buildx)"; exit 1; }
    elif command -v podman >/dev/null 2>&1; then
      builder=(podman build)
    else
      say "no container engine: install docker (with buildx) or podman"
      exit 1
    fi
    ;;
  *) say "CONTAINER_ENGINE must be docker or podman, not '$CONTAINER_ENGINE'"; exit 1 ;;
esac

command=("${builder[@]}" --network host --tag "$IMAGE" --file Dockerfile "$@" .)
say "${command[*]}"
"${command[@]}"
