#!/usr/bin/env bash
# Prepares the module Traefik is built from and prints its directory: a copy of this
# wrapper (go.mod, go.sum, ext/) with go-http-auth completed (goauth/) and whose lego, the ACME library Traefik links, is a copy of
# the pinned lego module with six DNS challenge providers swapped for the stubs in
# unavailable/<provider>/. Those six import SDK modules the Go module proxy refuses ("403 Forbidden:
# This module version is not available"), so Traefik as published cannot be built here.
# The copy lives beside the build cache, never in the clone (`go build -overlay` cannot do
# this: it refuses to replace files under GOMODCACHE).
#   module.sh WORKDIR
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
work=$1
# The pinned module's directory in the module cache, downloaded first (`go list -m` alone leaves
# .Dir empty for a module that is not there yet, as on a fresh machine).
module_dir() { (cd "$HERE" && go mod download "$1" && go list -m -f '{{.Dir}}' "$1"); }
lego_dir=$(module_dir github.com/go-acme/lego/v5)
[ -n "$lego_dir" ] || { echo "traefik module: lego is not in the module graph" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
cp -r "$HERE/go.mod" "$HERE/go.sum" "$HERE/ext" "$work/"
cp -r "$lego_dir" "$work/lego"
chmod -R u+w "$work/lego"
for stub in "$HERE"/unavailable/*/*.go; do
  pkg=$(basename "$stub" .go)
  dir=$work/lego/providers/dns/$pkg
  [ -d "$dir" ] || { echo "traefik module: lego has no provider $pkg" >&2; exit 1; }
  # Only the stub remains: the package's files and its internal/ helpers import the SDK.
  rm -rf "${dir:?}"/*
  cp "$stub" "$dir/$pkg.go"
done
# go-http-auth v0.4.0 plus the two functions Traefik calls that only its refused fork has
# (goauth/traefik_additions.go.in).
goauth_dir=$(module_dir github.com/abbot/go-http-auth)
cp -r "$goauth_dir" "$work/goauth"
chmod -R u+w "$work/goauth"
cp "$HERE/goauth/traefik_additions.go.in" "$work/goauth/traefik_additions.go"
# v0.4.0 predates modules; a replacement directory needs a go.mod. Its imports (x/crypto,
# x/net) come from Traefik's own requirements.
printf 'module github.com/abbot/go-http-auth\n\ngo 1.17\n' >"$work/goauth/go.mod"
(cd "$work" && go mod edit -replace github.com/go-acme/lego/v5=./lego -replace github.com/abbot/go-http-auth=./goauth)
echo "$work"
