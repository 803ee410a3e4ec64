"""`make platform`: the add-ons a production cluster runs, in the cluster of `make cluster` (stdlib only).

    python3 deploy/platform/platform.py up [component ...]     # default: metrics-server monitoring
    python3 deploy/platform/platform.py down [component ...]   # the same default
    python3 deploy/platform/platform.py status

Components (each built from its pinned Go module by deploy/cluster/build.sh, into an image
made here and imported into the cluster's containerd; nothing is pulled):
- metrics-server: the metrics.k8s.io API (`kubectl top`, the HorizontalPodAutoscaler's CPU
  target), registered with the API server's aggregation layer.
- monitoring: the Prometheus Operator with its CRDs (from the pinned module), and one
  Prometheus (3.5, from its module: Debian's package has no Kubernetes service discovery) in
  the namespace `monitoring`, selecting ServiceMonitors, PodMonitors and PrometheusRules
  labelled release=kube-prometheus-stack in any namespace, as kube-prometheus-stack does.
- keda (only when named: `make platform-keda`): the KEDA operator and its metrics API server
  (external.metrics.k8s.io), with its CRDs from the pinned module. Its cold build is the
  heaviest of all (docs/keda.md gives the numbers), so it is not in the default set.

`up` is idempotent (server-side apply) and returns when each component is ready; it prints
"platform: [n/N] component ... done in Xs". The chart values that use these components are
in deploy/platform/values.yaml. The cluster: this clone's `make cluster`, else the one
running on this machine (its clone is in /run/catalog-cluster/owner), else the kubeconfig
CATALOG_CLUSTER_KUBECONFIG names. Needs root for `ctr` (the image import).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "cluster"))

import images  # noqa: E402  (deploy/cluster: the OCI archive writer)

BUILD = ROOT / "deploy" / "cluster" / "build.sh"
TOOLS = ROOT / "deploy" / "cluster" / "tools"
OWNER = Path("/run/catalog-cluster/owner")
CONTAINERD_SOCKET = Path("/run/catalog-cluster/containerd/containerd.sock")
IMAGE_PREFIX = "localhost/catalog-platform"
# The label value kube-prometheus-stack's Prometheus selects by (its release name); the chart's
# monitoring.release defaults to it.
SELECTOR_RELEASE = "kube-prometheus-stack"
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"platform: {message}", flush=True)


def kubeconfig() -> Path:
    """The kubeconfig of the cluster to install into (see the module docstring for the order)."""
    named = os.environ.get("CATALOG_CLUSTER_KUBECONFIG")
    if named:
        return Path(named)
    own = ROOT / ".run" / "cluster" / "kubeconfig"
    if own.exists() or not OWNER.exists():
        return own
    return Path(OWNER.read_text().strip()) / ".run" / "cluster" / "kubeconfig"


def bin_dir(family: str) -> Path:
    out = subprocess.run(["bash", str(BUILD), "--print-bin", family], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def pinned(family: str, module: str) -> str:
    out = subprocess.run(["go", "list", "-m", "-f", "{{.Version}}", module], cwd=TOOLS / family,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def module_dir(family: str, module: str) -> Path:
    out = subprocess.run(["go", "mod", "download", "-json", module], cwd=TOOLS / family,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return Path(json.loads(out.stdout)["Dir"])


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir("kubernetes") / "kubectl"), f"--kubeconfig={kubeconfig()}", *args]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def apply(manifest: str) -> None:
    """Server-side apply (the CRDs are too large for the client-side annotation)."""
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=catalog-platform", "-f", "-",
            stdin=manifest)  # fmt: skip


def render(template: str, **values: str) -> str:
    return Template((HERE / template).read_text()).substitute(values)


def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def import_image(name: str, files: dict[str, Path], entrypoint: list[str], user: str = "65534:65534") -> str:
    """Writes `name` as an OCI archive of `files` (cached beside the binaries) and imports it; returns the name."""
    first = next(iter(files.values()))
    archive = first.parent.parent / f"image-{name.rsplit('/', 1)[1].replace(':', '-')}.tar"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        images.oci_archive(name, files, entrypoint, user, partial)
        partial.rename(archive)
    ctr = bin_dir("containerd") / "ctr"
    subprocess.run([str(ctr), f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io", "images", "import",
                    "--local", str(archive)], capture_output=True, text=True, check=True)  # fmt: skip
    return name


def rollout(namespace: str, kind_name: str, timeout: int = 300) -> None:
    kubectl("-n", namespace, "rollout", "status", kind_name, f"--timeout={timeout}s")


# --- metrics-server ---------------------------------------------------------------------------


def metrics_server_up() -> None:
    version = pinned("metrics-server", "sigs.k8s.io/metrics-server")
    binary = bin_dir("metrics-server") / "metrics-server"
    image = import_image(f"{IMAGE_PREFIX}/metrics-server:{version}", {"/metrics-server": binary}, ["/metrics-server"])
    ca = (kubeconfig().parent / "pki" / "ca.crt").read_text()
    indented = "\n".join(f"    {line}" for line in ca.strip().splitlines())
    apply(render("metrics-server.yaml", VERSION=version, IMAGE=image, CLUSTER_CA=indented))
    rollout("kube-system", "deployment/metrics-server")
    available = '{.status.conditions[?(@.type=="Available")].status}'
    wait("the metrics.k8s.io API to be Available",
         lambda: kubectl("get", "apiservice", "v1beta1.metrics.k8s.io", "-o", f"jsonpath={available}",
                         check=False).stdout == "True", 180)  # fmt: skip
    # The first resource metrics appear after one scrape of the kubelet (--metric-resolution).
    wait("`kubectl top nodes` to answer", lambda: kubectl("top", "nodes", check=False).returncode == 0, 180)


def metrics_server_down() -> None:
    manifest = render("metrics-server.yaml", VERSION="", IMAGE="none", CLUSTER_CA="    none")
    kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-", stdin=manifest)


# --- monitoring -------------------------------------------------------------------------------

OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"


def monitoring_up() -> None:
    version = pinned("prometheus-operator", OPERATOR_MODULE)
    source = module_dir("prometheus-operator", OPERATOR_MODULE)
    for crd in sorted((source / "example" / "prometheus-operator-crd-full").glob("*.yaml")):
        apply(crd.read_text())
    for plural in ("prometheuses", "servicemonitors", "podmonitors", "prometheusrules"):
        kubectl("wait", "--for=condition=Established", f"crd/{plural}.monitoring.coreos.com", "--timeout=60s")
    apply((source / "example" / "rbac" / "prometheus-operator" / "prometheus-operator-cluster-role.yaml").read_text())
    binaries = bin_dir("prometheus-operator")
    operator = import_image(f"{IMAGE_PREFIX}/prometheus-operator:{version}",
                            {"/bin/operator": binaries / "prometheus-operator"}, ["/bin/operator"])  # fmt: skip
    reloader = import_image(f"{IMAGE_PREFIX}/prometheus-config-reloader:{version}",
                            {"/bin/prometheus-config-reloader": binaries / "prometheus-config-reloader"},
                            ["/bin/prometheus-config-reloader"])  # fmt: skip
    module = pinned("prometheus", PROMETHEUS_MODULE)  # v0.<major><minor>.<patch>: v0.305.0 is 3.5.0
    major_minor, patch = module.removeprefix("v0.").split(".")
    prom_version = f"v{major_minor[0]}.{int(major_minor[1:])}.{patch}"
    server = bin_dir("prometheus") / "prometheus"
    image = f"{IMAGE_PREFIX}/prometheus:{prom_version}"
    prometheus = import_image(image, {"/bin/prometheus": server}, ["/bin/prometheus"])
    apply(render("monitoring.yaml", OPERATOR_VERSION=version, OPERATOR_IMAGE=operator, RELOADER_IMAGE=reloader,
                 PROMETHEUS_IMAGE=prometheus, PROMETHEUS_VERSION=prom_version,
                 SELECTOR_RELEASE=SELECTOR_RELEASE))  # fmt: skip
    rollout("monitoring", "deployment/prometheus-operator")
    wait("the operator to create the Prometheus StatefulSet",
         lambda: kubectl("-n", "monitoring", "get", "statefulset", "prometheus-platform", check=False).returncode == 0,
         120)  # fmt: skip
    rollout("monitoring", "statefulset/prometheus-platform")


def monitoring_down() -> None:
    kubectl("delete", "--ignore-not-found", "--wait=true", "-n", "monitoring", "prometheus", "platform")
    kubectl("delete", "--ignore-not-found", "--wait=true", "namespace", "monitoring")
    for kind_name in (
        "clusterrolebinding/prometheus-operator",
        "clusterrole/prometheus-operator",
        "clusterrolebinding/catalog-platform-prometheus",
        "clusterrole/catalog-platform-prometheus",
    ):
        kubectl("delete", "--ignore-not-found", kind_name)  # fmt: skip
    # The CRDs stay: deleting them deletes every ServiceMonitor and rule of every release.


# --- keda -------------------------------------------------------------------------------------

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_APISERVICE = "v1beta1.external.metrics.k8s.io"


def _keda_documents(version: str, operator: str, adapter: str) -> tuple[str, str, Path]:
    """(the Namespace, the rest of keda.yaml, upstream's generated RBAC for the operator)."""
    manifest = render("keda.yaml", VERSION=version, OPERATOR_IMAGE=operator, ADAPTER_IMAGE=adapter)
    namespace, rest = manifest.split("\n---\n", 1)
    return namespace, rest, module_dir("keda", KEDA_MODULE) / "config" / "rbac" / "role.yaml"


def keda_up() -> None:
    version = pinned("keda", KEDA_MODULE)
    source = module_dir("keda", KEDA_MODULE)
    # The CRDs as generated (config/crd/bases); upstream's kustomize patches only add bounds to
    # the HPA behavior's stabilization windows, which the API server checks anyway.
    for crd in sorted((source / "config" / "crd" / "bases").glob("*.yaml")):
        apply(crd.read_text())
    for plural in ("scaledobjects", "scaledjobs", "triggerauthentications", "clustertriggerauthentications"):
        kubectl("wait", "--for=condition=Established", f"crd/{plural}.keda.sh", "--timeout=60s")
    binaries = bin_dir("keda")
    operator = import_image(f"{IMAGE_PREFIX}/keda:{version}", {"/keda": binaries / "keda"}, ["/keda"])
    adapter = import_image(f"{IMAGE_PREFIX}/keda-metrics-apiserver:{version}",
                           {"/keda-adapter": binaries / "keda-adapter"}, ["/keda-adapter"])  # fmt: skip
    namespace, rest, rbac = _keda_documents(version, operator, adapter)
    # The operator's Role lives in its namespace: the namespace first, then the rights, then the pods.
    apply(namespace)
    apply(rbac.read_text())
    apply(rest)
    rollout("keda", "deployment/keda-operator")
    # The metrics API server mounts the Secret the operator's certificate rotation writes.
    rollout("keda", "deployment/keda-metrics-apiserver")
    available = '{.status.conditions[?(@.type=="Available")].status}'
    wait(f"the {KEDA_APISERVICE} API to be Available",
         lambda: kubectl("get", "apiservice", KEDA_APISERVICE, "-o", f"jsonpath={available}",
                         check=False).stdout == "True", 180)  # fmt: skip


def keda_down() -> None:
    namespace, rest, rbac = _keda_documents("", "none", "none")
    kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-", stdin=rest)
    kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-", stdin=rbac.read_text())
    kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-", stdin=namespace)
    # The CRDs stay: deleting them deletes every release's ScaledObject and TriggerAuthentication.


COMPONENTS: dict[str, tuple[str, Callable[[], None], Callable[[], None]]] = {
    "metrics-server": ("metrics-server", metrics_server_up, metrics_server_down),
    "monitoring": ("prometheus-operator prometheus", monitoring_up, monitoring_down),
    "keda": ("keda", keda_up, keda_down),
}
# What `up` and `down` do when no component is named: keda only when asked for (its cold build).
DEFAULT = ["metrics-server", "monitoring"]


def up(names: list[str]) -> None:
    families = sorted({family for name in names for family in COMPONENTS[name][0].split()})
    say(f"binaries (deploy/cluster/build.sh {' '.join(families)})")
    subprocess.run(["bash", str(BUILD), *families], check=True)
    for number, name in enumerate(names, 1):
        began = time.monotonic()
        say(f"[{number}/{len(names)}] {name} ...")
        COMPONENTS[name][1]()
        say(f"[{number}/{len(names)}] {name} done in {time.monotonic() - began:.1f}s")
    say(f"ready in {time.monotonic() - STARTED:.0f}s; chart values for it: deploy/platform/values.yaml")


def status() -> int:
    checks = {
        "metrics-server": ["get", "apiservice", "v1beta1.metrics.k8s.io"],
        "monitoring": ["-n", "monitoring", "get", "prometheus,deployment,statefulset"],
        "keda": ["get", "apiservice", KEDA_APISERVICE],
    }
    for name, args in checks.items():
        result = kubectl(*args, check=False)
        say(f"{name}:\n{(result.stdout or result.stderr).rstrip()}")
    return 0


def main(argv: list[str]) -> int:  # noqa: PLR0911  # one return per refusal reads best
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    names = argv[1:] or DEFAULT
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        say(f"unknown component(s) {', '.join(unknown)}: one of {', '.join(COMPONENTS)}")
        return 2
    if not kubeconfig().exists():
        say(f"no cluster: {kubeconfig()} does not exist (`make cluster` starts one)")
        return 1
    if shutil.which("go") is None:
        say("no go on PATH: the components are built from their pinned Go modules")
        return 1
    try:
        if argv[0] == "up":
            up(names)
        elif argv[0] == "down":
            for name in reversed(names):
                COMPONENTS[name][2]()
                say(f"{name} removed")
        else:
            return status()
    except (RuntimeError, subprocess.CalledProcessError) as error:
        say(f"FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
