#!/usr/bin/env bash
# Builds the Dex OpenID provider the identity tests run against and prints the
# binary's path.
#
#   deploy/identity/dex/build.sh          # build once, then reuse the cached binary
#
# The binary lives outside the clone, keyed by Dex's release and by this
# folder's go.sum, so every worktree and a fresh clone on the same machine
# share one build: ${XDG_CACHE_HOME:-$HOME/.cache}/catalog-tools/dex-<release>-<sum>/dex.
# The first build compiles a few hundred modules (several minutes on 2 cores);
# the Go module cache and build cache make later ones fast.
#
# Why a wrapper module (go.mod beside this script) and not `go install
# github.com/dexidp/dex/cmd/dex@<version>`: Dex's go.mod has a replace
# directive, which `go install pkg@version` refuses; and Dex's v2.x.y tags have
# no /v2 module path, so the proxy serves that release as the pseudo-version
# pinned in go.mod.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

DEX_RELEASE=v2.45.1
DEX_PSEUDO=v0.0.0-20260303133905-11d2eeb52b42   # the commit tagged v2.45.1

say() { printf 'dex: %s\n' "$*" >&2; }

grep -q "github.com/dexidp/dex $DEX_PSEUDO" "$here/go.mod" \
  || { say "go.mod does not pin $DEX_PSEUDO ($DEX_RELEASE): update DEX_PSEUDO and DEX_RELEASE together"; exit 1; }
command -v go >/dev/null 2>&1 \
  || { say "missing: a Go toolchain >= 1.25 as 'go' (Debian: apt-get install golang-go; or https://go.dev/dl)"; exit 1; }

sum=$(sha256sum "$here/go.sum" | cut -c1-12)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/catalog-tools/dex-$DEX_RELEASE-$sum"
bin="$dir/dex"
if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "$DEX_RELEASE"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
say "building Dex $DEX_RELEASE into $dir (first build: several minutes)"
started=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# -mod=readonly: go.sum is committed; a build never rewrites it.
# CGO stays on: Dex links the sqlite3 storage driver (the tests use memory storage).
(cd "$here" && GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags "-X main.version=$DEX_RELEASE" -o "$tmp" github.com/dexidp/dex/cmd/dex)
mv "$tmp" "$bin"
say "built $("$bin" version 2>/dev/null | head -n 1) in $(( $(date +%s) - started ))s"
echo "$bin"
