#!/usr/bin/env bash
# Builds vegeta, the open-model HTTP load generator `make capacity` drives, and
# prints the binary's path.
#
#   bench/tools/vegeta.sh     # build once (about 20 s), then reuse the cached binary
#
# Why vegeta: it sends at a fixed arrival rate whatever the server does (an open
# model: a slow answer does not delay the next request, as it does in locust's
# paced users or wrk), and it is Go, so one core drives a few thousand requests a
# second without becoming the bottleneck it would be in Python.
# The binary lives outside the clone, keyed by the version, so every clone on the
# machine shares it: ${XDG_CACHE_HOME:-$HOME/.cache}/catalog-tools/vegeta-<version>/vegeta.
set -euo pipefail

VEGETA_VERSION=v12.13.0

say() { printf 'vegeta: %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 \
  || { say "missing: a Go toolchain >= 1.22 as 'go' (Debian: apt-get install golang-go; or https://go.dev/dl)"; exit 1; }

dir="${XDG_CACHE_HOME:-$HOME/.cache}/catalog-tools/vegeta-$VEGETA_VERSION"
bin="$dir/vegeta"
if [ -x "$bin" ] && "$bin" -version 2>/dev/null | grep -q "${VEGETA_VERSION#v}"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
say "building vegeta $VEGETA_VERSION into $dir"
started=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# go install of a versioned module path: its own go.sum pins the dependencies.
GOBIN="$tmp" GOFLAGS=-mod=mod go install \
  -ldflags "-X main.Version=${VEGETA_VERSION#v}" "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
mv "$tmp/vegeta" "$bin"
say "built in $(( $(date +%s) - started ))s"
echo "$bin"
