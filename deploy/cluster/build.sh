#!/usr/bin/env bash
# Builds the cluster's binaries from the Go modules pinned under deploy/cluster/tools/
# (one module per component family, so the k8s.io/* versions one family needs are never
# raised by another) into a cache outside the clone, keyed by the family's go.mod, go.sum
# and build flags, so a later clone or CI run on the same machine reuses them.
#
#   deploy/cluster/build.sh [family ...]     families: kubernetes etcd containerd runc coredns
#                                            (the default); tilt (`make tilt`), traefik (`make gateway`),
#                                            metrics-server, prometheus-operator and prometheus
#                                            (`make platform`), keda (`make platform-keda`): built only when named
#   deploy/cluster/build.sh --print-bin F    the cache's bin directory for family F (no build)
#
# Prints one line per component: "build: [n/N] family/component (elapsed)".
# Cache: ${CATALOG_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/catalog-cluster}/<family>-<key>/bin
# Go's own module and build caches (GOMODCACHE, GOCACHE) live outside the clone as usual.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=$HERE/tools
CACHE=${CATALOG_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/catalog-cluster}
# Other work shares this machine; two compile jobs at a time keep it usable.
export GOFLAGS="-p=2 -mod=readonly -trimpath ${GOFLAGS:-}"
export GOTOOLCHAIN=local
FAMILIES=(kubernetes etcd containerd runc coredns)
# Tools that run against the cluster rather than make it: built only when asked for.
EXTRA_FAMILIES=(tilt traefik metrics-server prometheus-operator prometheus keda)

# family -> "package:binary" pairs, build tags, CGO, and version ldflags
components() {
  case $1 in
    kubernetes) echo k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl} ;;
    etcd) echo go.etcd.io/etcd/server/v3:etcd ;;
    containerd) echo github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr} ;;
    runc) echo github.com/opencontainers/runc ;;
    coredns) echo github.com/coredns/coredns ;;
    tilt) echo github.com/tilt-dev/tilt/cmd/tilt ;;
    traefik) echo github.com/traefik/traefik/v3/cmd/traefik ;;
    metrics-server) echo sigs.k8s.io/metrics-server/cmd/metrics-server ;;
    prometheus-operator)
      echo github.com/prometheus-operator/prometheus-operator/cmd/operator:prometheus-operator \
        github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader ;;
    prometheus) echo github.com/prometheus/prometheus/cmd/prometheus ;;
    # The operator and the metrics API server (external.metrics.k8s.io); the admission
    # webhooks (cmd/webhooks) only validate ScaledObjects early and are left out.
    keda)
      echo github.com/kedacore/keda/v2/cmd/operator:keda \
        github.com/kedacore/keda/v2/cmd/adapter:keda-adapter ;;
    *) echo "build: unknown family $1 (one of: ${FAMILIES[*]} ${EXTRA_FAMILIES[*]})" >&2; return 1 ;;
  esac
}
tags() {
  case $1 in
    kubernetes) echo selinux,notest,grpcnotrace ;;
    containerd) echo no_btrfs ;;
    runc) echo seccomp ;;
    *) echo "" ;;
  esac
}
# runc links libseccomp; tilt links tree-sitter's C parser (its Go package has no pure-Go build).
cgo() { case $1 in runc | tilt) echo 1 ;; *) echo 0 ;; esac; }

# The main module's version of MOD, as pinned in the family's go.mod.
pinned() { (cd "$TOOLS/$1" && go list -m -f '{{.Version}}' "$2"); }

ldflags() {
  local fam=$1 v
  case $fam in
    kubernetes)
      v=$(pinned kubernetes k8s.io/kubernetes)
      local major=${v#v}; major=${major%%.*}
      local minor=${v#v*.}; minor=${minor%%.*}
      local f=""
      # Without these the binaries report v0.0.0-master and the kubelet's node
      # version (and kubectl's skew check) is meaningless.
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        f+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
      done
      echo "-s -w$f" ;;
    etcd) echo "-s -w" ;;
    containerd)
      v=$(pinned containerd github.com/containerd/containerd/v2)
      echo "-s -w -X github.com/containerd/containerd/v2/version.Version=$v -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd" ;;
    runc)
      v=$(pinned runc github.com/opencontainers/runc)
      echo "-s -w -X main.version=${v#v}" ;;
    coredns) echo "-s -w" ;;
    metrics-server)
      # Upstream's Makefile sets client-go's version (what /version and the logs report).
      v=$(pinned metrics-server sigs.k8s.io/metrics-server)
      echo "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.buildDate=1970-01-01T00:00:00Z" ;;
    prometheus-operator)
      v=$(pinned prometheus-operator github.com/prometheus-operator/prometheus-operator)
      echo "-s -w -X github.com/prometheus/common/version.Version=${v#v}" ;;
    prometheus)
      # The module is tagged v0.<major><minor>.<patch> (v0.305.0 is Prometheus 3.5.0).
      v=$(pinned prometheus github.com/prometheus/prometheus); v=${v#v0.}
      local mm=${v%%.*}
      echo "-s -w -X github.com/prometheus/common/version.Version=${mm:0:1}.$((10#${mm:1})).${v#*.}" ;;
    keda)
      # What upstream's Makefile sets (the version the operator logs and its metrics report).
      v=$(pinned keda github.com/kedacore/keda/v2)
      echo "-s -w -X github.com/kedacore/keda/v2/version.Version=${v#v}" ;;
    tilt)
      # What upstream's release sets (goreleaser: main.version without the "v"). A build
      # without it calls itself a dev build and looks for the web UI's dev server.
      v=$(pinned tilt github.com/tilt-dev/tilt)
      echo "-s -w -X main.version=${v#v} -X main.date=1970-01-01" ;;
    traefik)
      v=$(pinned traefik github.com/traefik/traefik/v3)
      echo "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$v -X github.com/traefik/traefik/v3/pkg/version.BuildDate=1970-01-01T00:00:00Z" ;;
  esac
}

# tilt embeds its web UI, or a page pointing to the CLI where there is no Node.js 20+
# (deploy/cluster/tilt-web.sh): the key says which.
web_kind() { [ "$(node --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p')" -ge 20 ] 2>/dev/null && echo ui || echo placeholder; }

key() {
  local fam=$1
  { cat "$TOOLS/$fam/go.mod" "$TOOLS/$fam/go.sum"; go version; tags "$fam"; cgo "$fam"; ldflags "$fam"
    components "$fam"; [ "$fam" != tilt ] || { web_kind; cat "$HERE/tilt-web.sh"; }
    [ "$fam" != traefik ] || cat "$TOOLS/traefik/module.sh" "$TOOLS/traefik"/ext/* "$TOOLS/traefik"/unavailable/*/* "$TOOLS/traefik"/goauth/*; } | sha256sum | cut -c1-12
}
bindir() { echo "$CACHE/$1-$(key "$1")/bin"; }

if [ "${1:-}" = --print-bin ]; then bindir "$2"; exit 0; fi

command -v go >/dev/null || { echo "build: no go on PATH (Go 1.25+ is needed to build the cluster)" >&2; exit 1; }
[ $# -gt 0 ] || set -- "${FAMILIES[@]}"

# Count what is to be built for the "n of N" lines.
total=0
for fam in "$@"; do for c in $(components "$fam"); do total=$((total + 1)); done; done
n=0
start=$SECONDS
for fam in "$@"; do
  out=$(bindir "$fam")
  tmp=$out.partial
  for c in $(components "$fam"); do
    n=$((n + 1))
    pkg=${c%%:*}
    name=${c##*:}
    [ "$name" = "$pkg" ] && name=${pkg##*/}
    [ "$fam" = coredns ] && name=coredns
    if [ -x "$out/$name" ]; then
      printf 'build: [%d/%d] %s/%s cached (%s)\n' "$n" "$total" "$fam" "$name" "$out"
      continue
    fi
    t0=$SECONDS
    printf 'build: [%d/%d] %s/%s building (elapsed %dm%02ds)\n' "$n" "$total" "$fam" "$name" \
      $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
    mkdir -p "$tmp"
    moddir=$TOOLS/$fam
    if [ "$fam" = tilt ]; then
      # Its module with the web UI embedded (tilt-web.sh); a failed UI build stops here
      # (an assignment keeps the command substitution's exit status).
      moddir=$(bash "$HERE/tilt-web.sh" "$(pinned tilt github.com/tilt-dev/tilt)")
    fi
    # Its module with lego's six unbuildable DNS providers stubbed (tools/traefik/module.sh).
    [ "$fam" != traefik ] || moddir=$(bash "$TOOLS/traefik/module.sh" "$out.module")
    (cd "$moddir" && CGO_ENABLED=$(cgo "$fam") go build -tags "$(tags "$fam")" \
      -ldflags "$(ldflags "$fam")" -o "$tmp/$name" "$pkg")
    printf 'build: [%d/%d] %s/%s done in %ds\n' "$n" "$total" "$fam" "$name" $((SECONDS - t0))
  done
  # The bin directory appears whole or not at all, so a killed build is never "cached".
  if [ -d "$tmp" ]; then
    mkdir -p "$out"
    for f in "$tmp"/*; do mv "$f" "$out/"; done
    rmdir "$tmp"
  fi
done
printf 'build: %d component(s) ready in %dm%02ds under %s\n' "$total" \
  $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$CACHE"
