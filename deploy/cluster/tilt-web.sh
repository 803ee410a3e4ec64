#!/usr/bin/env bash
# Tilt's web UI for the Tilt that deploy/cluster/build.sh builds, and a `go build -overlay`
# file that embeds it. Prints the overlay file's path; progress goes to stderr.
#
#   deploy/cluster/tilt-web.sh VERSION        (e.g. v0.37.1: the pinned github.com/tilt-dev/tilt)
#
# Why: a Tilt built with its release version (main.version) serves its UI from files
# embedded at pkg/assets/build, which the Go module leaves empty (upstream builds them with
# yarn before its release). Without them `tilt up` and `tilt ci` stop at start ("running in
# prod mode, but JS/CSS files are not available"); a dev build (no version) instead runs
# `yarn install` and a webpack dev server at every start. So the UI is built once from the
# module's own web/ sources (their yarn.lock, with the yarn release they vendor), from the
# npm registry, and cached next to the binaries by version.
#
# Without Node.js (20+) it embeds one page that says how to use the CLI instead: the API
# server, `tilt ci`, `tilt get` and `tilt logs` need no UI. build.sh keys the binary by
# which of the two it embeds.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VERSION" >&2; exit 2; }
version=$1
CACHE=${CATALOG_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/catalog-cluster}
module=$(go env GOMODCACHE)/github.com/tilt-dev/tilt@$version
assets=$module/pkg/assets/build
say() { printf 'build: tilt web UI: %s\n' "$*" >&2; }

[ -d "$module/web" ] || (cd "$(dirname "$0")/tools/tilt" && go mod download github.com/tilt-dev/tilt)

node_major() { node --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p'; }
if [ "$(node_major || echo 0)" -ge 20 ] 2>/dev/null; then
  kind=ui
else
  kind=placeholder
fi
out=$CACHE/tilt-web-$version-$kind
if [ ! -f "$out/overlay.json" ]; then
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
  # go build -overlay: each embedded file, as if it were in the module's pkg/assets/build.
  python3 - "$out.partial/build" "$assets" "$out/build" >"$out.partial/overlay.json" <<'EOF'
import json, os, sys
built, target, final = sys.argv[1:]
replace = {}
for directory, _, files in os.walk(built):
    for name in files:
        relative = os.path.relpath(os.path.join(directory, name), built)
        replace[os.path.join(target, relative)] = os.path.join(final, relative)
print(json.dumps({"Replace": replace}, indent=1, sort_keys=True))
EOF
  rm -rf "$out"
  mv "$out.partial" "$out"
fi
echo "$out/overlay.json"
