#!/usr/bin/env bash
# Installs what `make test` / `make up` (and, with the argument `bench`,
# `make bench`) need on a fresh Debian machine, or stops with a message naming
# what is missing and how to get it.
#   uv (pinned)                  -> on PATH already, or installed into .tools/uv
#   Python packages              -> `uv sync --frozen` from uv.lock
#   PostgreSQL, Redis, nginx,
#   Prometheus (with promtool)   -> apt-get when running as root, otherwise a message
#   with the argument `image` (`make test`): a Docker engine (docker.io) and
#   mmdebstrap for the image test -> apt-get when running as root; otherwise a
#   note, and that test skips saying why
#   with the argument `cluster` (`make cluster`, `make test`): what the local Kubernetes
#   (deploy/cluster) needs besides Go -> apt-get when running as root; otherwise a note,
#   and the cluster tests skip saying why
set -euo pipefail
cd "$(dirname "$0")/../.."

UV_VERSION=0.13.9
APT_UPDATED=0

say() { printf 'bootstrap: %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing: $*. Install with: sudo apt-get install -y $*  (then run this again)"
    exit 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python >= 3.11 (uv uses the system interpreter; it never downloads one here).
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "missing: Python >= 3.11 as python3 (Debian 12: apt-get install python3)"
  exit 1
fi

# uv: prefer one on PATH; otherwise a pinned copy in .tools/uv.
if command -v uv >/dev/null 2>&1; then
  UV=$(command -v uv)
else
  UV=.tools/uv/bin/uv
  if [ ! -x "$UV" ]; then
    if ! python3 -m venv .tools/uv >/dev/null 2>&1; then
      rm -rf .tools/uv
      apt_install python3-venv
      python3 -m venv .tools/uv
    fi
    say "installing uv==$UV_VERSION into .tools/uv"
    .tools/uv/bin/pip install -q "uv==$UV_VERSION"
  fi
fi

# System servers the tests and `make up` run as real processes.
pg_ok() { command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
missing=()
pg_ok || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ "$(id -u)" -eq 0 ] && ! command -v runuser >/dev/null 2>&1; then missing+=(util-linux); fi
if [ "${1:-}" = bench ]; then
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The image test builds and runs the image (tests/image): it needs a Docker engine, or dockerd to
# start one, and mmdebstrap for its stand-in base image. Without them that test skips; nothing stops.
if [ "${1:-}" = image ]; then
  image_missing=()
  if ! command -v dockerd >/dev/null 2>&1 && ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    image_missing+=(docker.io)
  fi
  command -v mmdebstrap >/dev/null 2>&1 || image_missing+=(mmdebstrap)
  if [ ${#image_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt_install "${image_missing[@]}"
    else
      say "the image test will skip: ${image_missing[*]} missing (as root: apt-get install -y ${image_missing[*]})"
    fi
  fi
fi

# The local Kubernetes (deploy/cluster, tests/cluster): CNI plugins, runc's libseccomp, a static
# libc for the pause binary, nft for kube-proxy's nftables mode. Go itself (1.25+) is not in
# Debian 12; without it the cluster tests skip and say so.
if [[ " $* " == *" cluster "* ]]; then
  cluster_missing=()
  [ -x /usr/lib/cni/bridge ] || cluster_missing+=(containernetworking-plugins)
  [ -e /usr/include/seccomp.h ] || cluster_missing+=(libseccomp-dev)
  command -v gcc >/dev/null 2>&1 || cluster_missing+=(gcc)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || compgen -G '/usr/lib/*/libc.a' >/dev/null || cluster_missing+=(libc6-dev)
  command -v nft >/dev/null 2>&1 || cluster_missing+=(nftables)
  command -v iptables >/dev/null 2>&1 || cluster_missing+=(iptables)
  command -v openssl >/dev/null 2>&1 || cluster_missing+=(openssl)
  if [ ${#cluster_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt_install "${cluster_missing[@]}"
    else
      say "the cluster tests will skip: ${cluster_missing[*]} missing (as root: apt-get install -y ${cluster_missing[*]})"
    fi
  fi
fi

if [ "${1:-}" = bench ]; then
  "$UV" sync --frozen --quiet --group bench  # the peers' libraries (bench/peers/common_way.py)
else
  "$UV" sync --frozen --quiet
fi
