#!/usr/bin/env bash
# Tilt's web UI for the Tilt that deploy/cluster/build.sh builds, and the module to build it
# from. Prints that module's directory; progress goes to stderr.
#
#   deploy/cluster/tilt-web.sh VERSION        (e.g. v0.37.1: the pinned github.com/tilt-dev/tilt)
#
# Why: a Tilt built with its release version (main.version) serves its UI from files
# embedded at pkg/assets/build, which the Go module leaves empty (upstream builds them with
# yarn before its release). Without them `tilt up` and `tilt ci` stop at start ("running in
# prod mode, but JS/CSS files are not available"), --port=0 included; --web-mode=local wants
# the web/ sources beside a path that -trimpath removes, then runs yarn and a webpack dev
# server at every start. So the UI is built once from the module's own web/ sources (their
# yarn.lock, with the yarn release they vendor), from the npm registry, and cached by version.
#
# Go embeds only files inside a module, never files laid over the module cache (`go build
# -overlay` refuses those), so the build uses a copy of the tilt module with the UI in
# pkg/assets/build, and a copy of deploy/cluster/tools/tilt whose go.mod replaces the module
# with that copy; both live in the cache, outside the clone. Every other module still comes
# from the module cache, pinned by the committed go.sum.
#
# Without Node.js (20+) it embeds one page that says how to use the CLI instead: the API
# server, `tilt ci`, `tilt get` and `tilt logs` need no UI. build.sh keys the binary by
# which of the two it embeds.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VERSION" >&2; exit 2; }
version=$1
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${CATALOG_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/catalog-cluster}
module=$(go env GOMODCACHE)/github.com/tilt-dev/tilt@$version
assets=$module/pkg/assets/build
say() { printf 'build: tilt web UI: %s\n' "$*" >&2; }

[ -d "$module/web" ] || (cd "$HERE/tools/tilt" && go mod download github.com/tilt-dev/tilt)

node_major() { node --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p'; }
if [ "$(node_major || echo 0)" -ge 20 ] 2>/dev/null; then
  kind=ui
else
  kind=placeholder
fi
out=$CACHE/tilt-web-$version-$kind
# One build at a time (two would share $out.partial).
mkdir -p "$CACHE"
exec 9>"$CACHE/tilt-web.lock"
flock 9
if [ ! -f "$out/build/index.html" ]; then
  rm -rf "$out.partial"
  mkdir -p "$out.partial"
  if [ $kind = ui ]; then
    start=$SECONDS
    cp -r "$module/web/." "$out.partial/web"
    chmod -R u+w "$out.partial/web"
    cd "$out.partial/web"
    yarn=(node "$(ls .yarn/releases/yarn-*.cjs)")
    say "yarn install (the module's yarn.lock, from the npm registry; packages cached in $CACHE/tilt-yarn-cache)"
    # The downloads (~120 MB, many minutes on a busy machine) are kept for the next version.
    YARN_NPM_REGISTRY_SERVER=${YARN_NPM_REGISTRY_SERVER:-https://registry.npmjs.org} \
      YARN_CACHE_FOLDER=$CACHE/tilt-yarn-cache YARN_ENABLE_TELEMETRY=0 YARN_ENABLE_PROGRESS_BARS=0 \
      nice -n 10 "${yarn[@]}" install --immutable >&2
    say "react-scripts build ($((SECONDS - start)) s so far)"
    CI=false GENERATE_SOURCEMAP=false nice -n 10 "${yarn[@]}" build >&2
    mv build "$out.partial/build"
    cd "$out.partial"
    rm -rf web
    say "built in $((SECONDS - start)) s"
  else
    say "no Node.js 20+: embedding a page that points to the CLI instead of the UI"
    mkdir -p "$out.partial/build"
    cat >"$out.partial/build/index.html" <<'EOF'
<!doctype html>
<html><head><meta charset="utf-8"><title>Tilt</title></head>
<body><h1>Tilt</h1>
<p>This Tilt was built without its web UI (no Node.js where it was built).
Everything works from the command line: <code>tilt get uiresources</code>,
<code>tilt logs</code>, <code>tilt trigger NAME</code>, <code>tilt ci</code>.
Install Node.js 20+ and rebuild (<code>deploy/cluster/build.sh tilt</code>) for the UI.</p>
</body></html>
EOF
  fi
  mkdir -p "$out"
  rm -rf "$out/build"
  mv "$out.partial/build" "$out/build"
  rm -rf "$out.partial"
fi

# The tilt module with the UI embedded, and the wrapper module pointed at it (per go.mod/go.sum).
src=$out/src-$(cat "$HERE/tools/tilt/go.mod" "$HERE/tools/tilt/go.sum" | sha256sum | cut -c1-12)
if [ ! -f "$src/wrapper/go.mod" ]; then
  rm -rf "$src.partial"
  mkdir -p "$src.partial/wrapper"
  cp -r "$module" "$src.partial/tilt"
  chmod -R u+w "$src.partial/tilt"
  cp -r "$out/build/." "$src.partial/tilt/pkg/assets/build/"
  cp "$HERE/tools/tilt/go.mod" "$HERE/tools/tilt/go.sum" "$src.partial/wrapper/"
  (cd "$src.partial/wrapper" && go mod edit -replace "github.com/tilt-dev/tilt=../tilt")
  mv "$src.partial" "$src"
fi
echo "$src/wrapper"
