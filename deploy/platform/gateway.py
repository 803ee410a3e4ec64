"""The cluster's edge: a Gateway API Gateway served by Traefik, built here (stdlib only).

    python3 deploy/platform/gateway.py up      # make gateway: build, import, apply; returns when Programmed
    python3 deploy/platform/gateway.py down    # make gateway-down: the edge's namespace and cluster objects
    python3 deploy/platform/gateway.py status  # the Gateway's conditions and address

`up` is idempotent: it builds Traefik with deploy/cluster/build.sh (cached), writes its image
(the static binary alone, deploy/cluster/images.py) and imports it into the cluster's
containerd, applies the Gateway API CRDs from the sigs.k8s.io/gateway-api module Traefik
pins (config/crd/standard), then deploy/platform/gateway.yaml. A chart release attaches
with `httpRoute.parentRefs: [{name: edge, namespace: catalog-edge}]`; the edge listens on the
ClusterIP Service catalog-edge/edge, port 80, reachable from the node.

The cluster is the one `make cluster` runs (deploy/cluster/cluster.py; its kubeconfig is
found through /run/catalog-cluster/owner) unless KUBECONFIG names another. `down` leaves the
CRDs: deleting them would delete every HTTPRoute in the cluster.

Why Traefik and not NGINX Gateway Fabric: docs/edge-cluster.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLUSTER = ROOT / "deploy" / "cluster"
TOOLS = CLUSTER / "tools" / "traefik"
sys.path.insert(0, str(CLUSTER))
import images  # noqa: E402  # deploy/cluster/images.py, beside this directory

NAMESPACE = "catalog-edge"
GATEWAY = "edge"
LISTENER_PORT = 8000
OWNER = Path("/run/catalog-cluster/owner")
CONTAINERD_SOCKET = "/run/catalog-cluster/containerd/containerd.sock"
# The chart's defaults for the edge (deploy/helm/catalog/values.yaml proxy.*): the timeout chain
# the chart's guards check is proxy.readTimeoutSeconds > settings.requestTimeoutSeconds.
READ_TIMEOUT = 30
CONNECT_TIMEOUT = 5
KEEPALIVE_TIMEOUT = 60


def say(message: str) -> None:
    print(f"gateway: {message}", flush=True)


def run(argv: list[str], stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ...: {result.stderr.strip() or result.stdout.strip()}")
    return result


def bin_dir(family: str) -> Path:
    return Path(run(["bash", str(CLUSTER / "build.sh"), "--print-bin", family]).stdout.strip())


def kubeconfig() -> Path:
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    if OWNER.exists():
        return Path(OWNER.read_text().strip()) / ".run" / "cluster" / "kubeconfig"
    raise RuntimeError("no cluster: run `make cluster` first (or set KUBECONFIG)")


def kubectl(*args: str, stdin: str | None = None) -> str:
    return run([str(bin_dir("kubernetes") / "kubectl"), f"--kubeconfig={kubeconfig()}", *args], stdin=stdin).stdout


def pinned(module: str) -> str:
    return run(["go", "list", "-m", "-f", "{{.Version}}", module], cwd=TOOLS).stdout.strip()


def image_name() -> str:
    """localhost/catalog-cluster/traefik:<version>-<build key>: a rebuilt binary gets a new name, so a
    rerun of `up` after a change rolls the Deployment instead of leaving the old image running."""
    key = bin_dir("traefik").parent.name.rsplit("-", 1)[1]
    return f"localhost/catalog-cluster/traefik:{pinned('github.com/traefik/traefik/v3')}-{key}"


def build_and_import() -> str:
    started = time.monotonic()
    subprocess.run(["bash", str(CLUSTER / "build.sh"), "traefik"], check=True)
    binary = bin_dir("traefik") / "traefik"
    archive = binary.parent.parent / "traefik-image.tar"
    name = image_name()
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        images.oci_archive(name, {"/traefik": binary}, ["/traefik"], "65532:65532", partial)
        partial.rename(archive)
    ctr = [str(bin_dir("containerd") / "ctr"), f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io"]
    if name not in run([*ctr, "images", "list", "--quiet"]).stdout.split():
        run([*ctr, "images", "import", "--local", str(archive)])
    say(f"image {name} in the cluster's containerd ({time.monotonic() - started:.0f}s)")
    return name


def apply_crds() -> None:
    version = pinned("sigs.k8s.io/gateway-api")
    listing = run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{version}"], cwd=TOOLS).stdout
    crds = Path(json.loads(listing)["Dir"]) / "config" / "crd" / "standard"
    # Server-side: the HTTPRoute CRD is larger than the last-applied annotation allows.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    # gateway.networking.k8s.io_<plural>.yaml holds the CRD <plural>.gateway.networking.k8s.io; the
    # bundle's vap_safeupgrades.yaml is a ValidatingAdmissionPolicy, not a CRD.
    names = [f"crd/{p.stem.split('_', 1)[1]}.gateway.networking.k8s.io" for p in sorted(crds.glob("*.yaml"))]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *[n for n in names if "vap_" not in n])
    say(f"Gateway API CRDs {version} (standard channel) established")


def manifest(image: str) -> str:
    return Template((HERE / "gateway.yaml").read_text()).substitute(
        NAMESPACE=NAMESPACE, IMAGE=image, LISTENER_PORT=LISTENER_PORT, READ_TIMEOUT=READ_TIMEOUT,
        CONNECT_TIMEOUT=CONNECT_TIMEOUT, KEEPALIVE_TIMEOUT=KEEPALIVE_TIMEOUT,
    )  # fmt: skip


def conditions(kind: str, name: str, namespace: str | None = None) -> dict[str, str]:
    scope = ["-n", namespace] if namespace else []
    found = json.loads(kubectl(*scope, "get", kind, name, "-o", "json"))
    return {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", [])}


def wait_programmed(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (state := conditions("gateway", GATEWAY, NAMESPACE)).get("Programmed") != "True":
        if time.monotonic() > deadline:
            raise RuntimeError(f"Gateway {NAMESPACE}/{GATEWAY} not Programmed after {timeout:.0f}s: {state}")
        time.sleep(1)


def address() -> str:
    service = json.loads(kubectl("-n", NAMESPACE, "get", "service", GATEWAY, "-o", "json"))
    return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"


def up() -> None:
    started = time.monotonic()
    image = build_and_import()
    apply_crds()
    kubectl("apply", "-f", "-", stdin=manifest(image))
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/traefik", "--timeout=180s")
    wait_programmed()
    say(f"Gateway {NAMESPACE}/{GATEWAY} Programmed at {address()} ({time.monotonic() - started:.0f}s in all)")
    say(f'attach a release: --set-json \'httpRoute.parentRefs=[{{"name":"{GATEWAY}","namespace":"{NAMESPACE}"}}]\'')


def down() -> None:
    kubectl("delete", "--ignore-not-found", "--wait=true", "namespace", NAMESPACE)
    kubectl("delete", "--ignore-not-found", "gatewayclass", "traefik")
    kubectl("delete", "--ignore-not-found", "clusterrolebinding,clusterrole", "catalog-edge-traefik")
    say("removed (the Gateway API CRDs stay: deleting them would delete every HTTPRoute)")


def status() -> None:
    say(f"GatewayClass traefik: {conditions('gatewayclass', 'traefik')}")
    say(f"Gateway {NAMESPACE}/{GATEWAY}: {conditions('gateway', GATEWAY, NAMESPACE)} at {address()}")


def main() -> int:
    actions = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        print(f"usage: {sys.argv[0]} {'|'.join(actions)}", file=sys.stderr)
        return 2
    try:
        actions[sys.argv[1]]()
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"gateway: {sys.argv[1]} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
