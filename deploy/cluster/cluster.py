"""A single-node Kubernetes on this machine, from binaries built by deploy/cluster/build.sh (stdlib only).

    python3 deploy/cluster/cluster.py up      # make cluster: returns when the node is Ready and DNS answers
    python3 deploy/cluster/cluster.py down    # make cluster-down: nothing of the cluster is left
    python3 deploy/cluster/cluster.py status  # what runs, and what of a cluster is left on the host

`up` runs one action after another and prints a line per action
("cluster: [n/N] action ... done in Xs"); it first cleans what a killed run
left. The kubeconfig for kubectl and helm is .run/cluster/kubeconfig. Logs of
every component are in .run/cluster/logs/. Needs root (network, mounts,
cgroups), Go (the first build), gcc (the pause image), openssl, iptables,
nft and Debian's containernetworking-plugins (deploy/local/bootstrap.sh cluster).

One cluster per machine: the addresses and ports are fixed. `up` refuses while
another clone's cluster runs (its path is in /run/catalog-cluster/owner).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

import components
import host
import images
import pki
from components import Layout

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = ROOT / ".run" / "cluster"
CNI_BIN_DIR = Path(os.environ.get("CNI_BIN_DIR", "/usr/lib/cni"))  # Debian's containernetworking-plugins
FAMILIES = ("kubernetes", "etcd", "containerd", "runc", "coredns")
OWNER = host.RUNTIME_DIR / "owner"
PAUSE_IMAGE = f"localhost/catalog-cluster/pause:{images.PAUSE_VERSION}"
COREDNS_IMAGE = "localhost/catalog-cluster/coredns:{version}"
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"cluster: {message}", flush=True)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("CATALOG_CLUSTER_CACHE", f"{base}/catalog-cluster"))


@functools.cache
def bin_dir(family: str) -> Path:
    out = subprocess.run(
        ["bash", str(HERE / "build.sh"), "--print-bin", family], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def layout() -> Layout:
    return Layout(bins={family: bin_dir(family) for family in FAMILIES}, run=RUN)


@functools.cache
def tool_version(family: str, module: str) -> str:
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Version}}", module],
        cwd=HERE / "tools" / family, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


# --- processes ------------------------------------------------------------------------------


def start(name: str, argv: list[str]) -> int:
    RUN.joinpath("logs").mkdir(parents=True, exist_ok=True)
    with open(RUN / "logs" / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    (RUN / "pids").mkdir(exist_ok=True)
    (RUN / "pids" / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def running(name: str) -> bool:
    try:
        pid = int((RUN / "pids" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return False
    return pid in host.our_processes(cache_root())


def wait(what: str, check: Callable[[], bool], timeout: float, process: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and not running(process):
            tail = (RUN / "logs" / f"{process}.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{process} exited while waiting for {what}; its log ends:\n" + "\n".join(tail))
        time.sleep(0.5)
    log = f" (see {RUN / 'logs' / (process + '.log')})" if process else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{log}")


def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir("kubernetes") / "kubectl"), f"--kubeconfig={RUN / 'kubeconfig'}", *args]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    lay = layout()
    argv = [lay.bin("containerd", "ctr"), f"--address={lay.containerd_socket}", "--namespace=k8s.io", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
    return result


def port_open(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def dns_answers(server: str, name: str, port: int = 53) -> list[str]:
    """A records for `name` from `server` over UDP (empty on no answer); a minimal stdlib resolver."""
    query_id = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        try:
            sock.sendto(packet, (server, port))
            reply = sock.recv(4096)
        except OSError:
            return []
    count = struct.unpack(">H", reply[6:8])[0]
    offset, found = 12 + len(question) + 4, []
    for _ in range(count):
        offset += 2 if reply[offset] & 0xC0 == 0xC0 else len(reply[offset:].split(b"\0", 1)[0]) + 1
        kind, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return found


# --- up: one function per action ------------------------------------------------------------


def render(template: str, out: Path, **values: str) -> None:
    text = Template((HERE / "config" / template).read_text()).substitute(values)
    out.write_text(text)


def action_clean() -> None:
    if OWNER.exists():
        owner = OWNER.read_text().strip()
        if owner != str(ROOT) and host.our_processes(cache_root()):
            raise RuntimeError(f"a cluster from {owner} is running: run `make cluster-down` there first")
    clean()


def action_build() -> None:
    subprocess.run(["bash", str(HERE / "build.sh"), *FAMILIES], check=True)


def action_host() -> None:
    host.prepare()
    OWNER.write_text(str(ROOT))


def action_certificates() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    keys = RUN / "pki"
    keys.mkdir(parents=True)
    keys.chmod(0o700)
    pki.make_ca(keys)
    names = (host.NODE_IP, host.API_SERVICE_IP, "127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
             "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")  # fmt: skip
    pki.sign(keys, "apiserver", "kube-apiserver", server_names=names)
    pki.sign(keys, "kubelet-serving", f"system:node:{components.NODE_NAME}", ("system:nodes",),
             server_names=(host.NODE_IP, components.NODE_NAME))  # fmt: skip
    pki.sign(keys, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
    pki.service_account_keys(keys)
    # The aggregation layer (metrics-server's metrics.k8s.io, KEDA's external metrics): the API
    # server proxies to them as front-proxy-client, under a CA of its own, as kubeadm sets it up.
    pki.make_ca(keys, "front-proxy-ca", "catalog-cluster-front-proxy-ca")
    pki.sign(keys, "front-proxy-client", "front-proxy-client", ca="front-proxy-ca")
    identities = {
        "admin": ("catalog-cluster-admin", ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kubelet": (f"system:node:{components.NODE_NAME}", ("system:nodes",)),
        "kube-proxy": ("system:kube-proxy", ()),
    }
    server = f"https://{host.NODE_IP}:{components.API_PORT}"
    for stem, (cn, groups) in identities.items():
        pki.sign(keys, stem, cn, groups)
        pki.kubeconfig(keys, stem, server, RUN / ("kubeconfig" if stem == "admin" else f"{stem}.kubeconfig"))


def action_etcd() -> None:
    lay = layout()
    lay.etcd_data.mkdir(parents=True, mode=0o700)
    start("etcd", components.etcd(lay))
    wait("etcd on 127.0.0.1:2379", lambda: port_open("127.0.0.1", 2379), 60, "etcd")


def action_apiserver() -> None:
    start("kube-apiserver", components.kube_apiserver(layout()))
    ready = lambda: kubectl("get", "--raw=/readyz", check=False).returncode == 0  # noqa: E731
    wait("kube-apiserver /readyz", ready, 180, "kube-apiserver")


def action_controllers() -> None:
    lay = layout()
    start("kube-controller-manager", components.kube_controller_manager(lay))
    start("kube-scheduler", components.kube_scheduler(lay))
    wait("kube-controller-manager on 127.0.0.1:10257", lambda: port_open("127.0.0.1", 10257), 120,
         "kube-controller-manager")  # fmt: skip
    wait("kube-scheduler on 127.0.0.1:10259", lambda: port_open("127.0.0.1", 10259), 120, "kube-scheduler")


def action_containerd() -> None:
    lay = layout()
    state = host.RUNTIME_DIR / "containerd"
    cni_conf = RUN / "cni"
    cni_conf.mkdir(parents=True, exist_ok=True)
    ipam = str(host.RUNTIME_DIR / "ipam")
    render("cni.conflist", cni_conf / "10-catalog-cluster.conflist", BRIDGE=host.BRIDGE, CNI_IPAM_DIR=ipam,
           POD_CIDR=host.POD_CIDR, POD_GATEWAY=host.POD_GATEWAY)  # fmt: skip
    render("containerd.toml", RUN / "containerd.toml", CONTAINERD_ROOT=str(lay.containerd_root),
           CONTAINERD_STATE=str(state), CONTAINERD_SOCKET=str(lay.containerd_socket), PAUSE_IMAGE=PAUSE_IMAGE,
           CNI_BIN_DIR=str(CNI_BIN_DIR), CNI_CONF_DIR=str(cni_conf), RUNC=lay.bin("runc", "runc"),
           RUNC_ROOT=str(host.RUNTIME_DIR / "runc"))  # fmt: skip
    if not (CNI_BIN_DIR / "bridge").exists():
        raise RuntimeError(f"no CNI plugins in {CNI_BIN_DIR}: apt-get install containernetworking-plugins")
    start("containerd", components.containerd(lay))
    wait("containerd's socket", lambda: ctr("version", check=False).returncode == 0, 60, "containerd")
    purge_containers()
    for archive in (pause_archive(), coredns_archive()):
        ctr("images", "import", "--local", str(archive))


def pause_archive() -> Path:
    out = cache_root() / "images" / f"pause-{images.PAUSE_VERSION}.tar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        source = Path(tool_dir("kubernetes", "k8s.io/kubernetes")) / "build" / "pause" / "linux" / "pause.c"
        binary = out.with_suffix(".bin")
        images.build_pause(source, binary)
        images.oci_archive(PAUSE_IMAGE, {"/pause": binary}, ["/pause"], "65535:65535", out.with_suffix(".partial"))
        out.with_suffix(".partial").rename(out)
        binary.unlink()
    return out


def coredns_image() -> str:
    return COREDNS_IMAGE.format(version=tool_version("coredns", "github.com/coredns/coredns"))


def coredns_archive() -> Path:
    binary = bin_dir("coredns") / "coredns"
    out = binary.parent.parent / "coredns-image.tar"
    if not out.exists():
        images.oci_archive(
            coredns_image(), {"/coredns": binary}, ["/coredns"], "65532:65532", out.with_suffix(".partial")
        )
        out.with_suffix(".partial").rename(out)
    return out


def tool_dir(family: str, module: str) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", module], cwd=HERE / "tools" / family, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return str(json.loads(out.stdout)["Dir"])


def action_kubelet() -> None:
    lay = layout()
    render("kubelet.yaml", RUN / "kubelet.yaml", NODE_IP=host.NODE_IP, PKI=str(lay.pki),
           CONTAINERD_SOCKET=str(lay.containerd_socket), DNS_IP=host.DNS_IP, POD_LOGS=str(host.POD_LOGS))  # fmt: skip
    lay.kubelet_root.mkdir(parents=True, exist_ok=True)
    start("kubelet", components.kubelet(lay))
    wait(f"node {components.NODE_NAME} Ready", node_ready, 180, "kubelet")


def node_ready() -> bool:
    jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
    result = kubectl("get", "node", components.NODE_NAME, "-o", f"jsonpath={jsonpath}", check=False)
    return result.stdout.strip() == "True"


def action_kube_proxy() -> None:
    render("kube-proxy.yaml", RUN / "kube-proxy.yaml", RUN=str(RUN), NODE_NAME=components.NODE_NAME,
           POD_CIDR=host.POD_CIDR, NODE_IP=host.NODE_IP)  # fmt: skip
    start("kube-proxy", components.kube_proxy(layout()))
    wait("kube-proxy's nftables table", lambda: "ip kube-proxy" in host.leftovers(cache_root()).get("nftables", []),
         60, "kube-proxy")  # fmt: skip


def action_dns() -> None:
    manifest = Template((HERE / "config" / "coredns.yaml").read_text()).substitute(
        COREDNS_IMAGE=coredns_image(), DNS_IP=host.DNS_IP
    )
    kubectl("apply", "-f", "-", stdin=manifest)
    name = "kubernetes.default.svc.cluster.local"
    answered = lambda: dns_answers(host.DNS_IP, name) == [host.API_SERVICE_IP]  # noqa: E731
    wait(f"cluster DNS ({host.DNS_IP}) to answer {name}", answered, 180)


UP = (
    ("clean what an earlier run left", action_clean),
    ("binaries (deploy/cluster/build.sh)", action_build),
    ("host: node address, sysctls, forwarding guard", action_host),
    ("certificates and kubeconfigs", action_certificates),
    ("etcd", action_etcd),
    ("kube-apiserver", action_apiserver),
    ("kube-controller-manager and kube-scheduler", action_controllers),
    ("containerd and the cluster's images", action_containerd),
    ("kubelet", action_kubelet),
    ("kube-proxy", action_kube_proxy),
    ("CoreDNS", action_dns),
)


def up() -> None:
    for number, (title, action) in enumerate(UP, 1):
        began = time.monotonic()
        say(f"[{number}/{len(UP)}] {title} ...")
        action()
        say(f"[{number}/{len(UP)}] {title} done in {time.monotonic() - began:.1f}s")
    say(f"ready in {time.monotonic() - STARTED:.0f}s: export KUBECONFIG={RUN / 'kubeconfig'}")


# --- down -----------------------------------------------------------------------------------


def purge_containers() -> None:
    """Kills and deletes every container containerd knows in the k8s.io namespace (a killed run leaves some)."""
    tasks = ctr("tasks", "list", "--quiet", check=False).stdout.split()
    for task in tasks:
        ctr("tasks", "kill", "--signal", "SIGKILL", "--all", task, check=False)
    for task in tasks:
        ctr("tasks", "delete", "--force", task, check=False)
    containers = ctr("containers", "list", "--quiet", check=False).stdout.split()
    if containers:
        ctr("containers", "delete", *containers, check=False)


def clean() -> None:
    """Stops everything of a cluster and removes what it put on the host; safe when nothing runs."""
    cache = cache_root()
    for name in ("kubelet", "kube-proxy"):
        if running(name):
            host.stop([int((RUN / "pids" / f"{name}.pid").read_text())], grace=10)
    if host.our_processes(cache) and Path(layout().containerd_socket).exists():
        purge_containers()
    host.stop(host.pod_processes(), grace=2)
    for name, _ in reversed(components.ORDER):
        if running(name):
            host.stop([int((RUN / "pids" / f"{name}.pid").read_text())], grace=10)
    host.stop(list(host.our_processes(cache)), grace=5)  # shims, and anything a lost pid file hid
    host.clean_cgroups()
    host.unmount_all()
    host.clean_network()
    host.restore_sysctls()
    shutil.rmtree(host.RUNTIME_DIR, ignore_errors=True)
    shutil.rmtree(host.STATE_DIR / "kubelet", ignore_errors=True)
    host.clean_pod_logs()
    shutil.rmtree(RUN / "pids", ignore_errors=True)


def down() -> int:
    clean()
    left = host.leftovers(cache_root())
    if left:
        say(f"left behind: {json.dumps(left)}")
        return 1
    say("down: no process, mount, interface, iptables/nftables rule or cgroup of the cluster is left")
    return 0


def status() -> int:
    for name, _ in components.ORDER:
        say(f"{name:24} {'running' if running(name) else 'stopped'}")
    left = host.leftovers(cache_root())
    for kind, items in left.items():
        say(f"{kind}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    if os.geteuid() != 0:
        say("needs root (network address, iptables, mounts, cgroups): run it as root")
        return 1
    try:
        if argv[0] == "up":
            up()
            return 0
    except (RuntimeError, subprocess.CalledProcessError) as error:
        say(f"FAILED: {error}")
        say("logs: .run/cluster/logs/; `make cluster-down` removes what was started")
        return 1
    return down() if argv[0] == "down" else status()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
