"""What the local cluster changes on the host, how it is put back, and how leftovers are found (stdlib only).

Set up (`prepare`): the node address on `lo`, the sysctls a node needs
(forwarding, bridged traffic through iptables), and the forwarding guard: a
chain at the top of FORWARD that lets pods talk to each other over the bridge
and drops anything else that would be forwarded from or to the pod range, so
nothing a pod sends leaves this machine (there is no masquerade either).

Taken down (`clean`, also run before `make cluster` to clear a killed run):
every process of ours (by executable, under the build cache, or by cgroup, the
pods'), every mount under our directories, the network namespaces, the bridge,
every iptables chain named KUBE-*, CNI-* or CATALOG-* and the rules that jump to
them, kube-proxy's nftables tables, the pods' cgroups, the node address, and
the sysctls as they were before. `leftovers()` lists what of that still exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

NODE_IP = "198.19.255.1"
POD_CIDR = "198.18.0.0/16"
POD_GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.19.0.0/17"
API_SERVICE_IP = "198.19.0.1"
DNS_IP = "198.19.0.10"
BRIDGE = "cni0"
RUNTIME_DIR = Path("/run/catalog-cluster")  # sockets, containerd state, network namespaces
STATE_DIR = Path("/var/lib/catalog-cluster")  # kubelet root; containerd's images are kept
POD_LOGS = STATE_DIR / "pod-logs"
# The kubelet links every container's log here whatever podLogsDir says.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
GUARD_CHAIN = "CATALOG-CLUSTER-FWD"
CHAIN_PREFIXES = ("KUBE-", "CNI-", "CATALOG-")
NFT_TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Sysctls set here or by the kubelet (protectKernelDefaults: false sets the kernel.* and vm.* ones).
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
SYSCTL_RECORD = RUNTIME_DIR / "sysctl.json"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def prepare() -> None:
    """Node address, sysctls (the old values recorded first), and the forwarding guard."""
    RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    if NODE_IP not in run("ip", "-4", "addr", "show", "dev", "lo").stdout:
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
    if not SYSCTL_RECORD.exists():
        record = {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS if _sysctl_path(name).exists()}
        SYSCTL_RECORD.write_text(json.dumps(record))
    if not _sysctl_path("net.bridge.bridge-nf-call-iptables").exists():
        raise RuntimeError("no net.bridge.bridge-nf-call-iptables: the kernel lacks bridge netfilter (br_netfilter)")
    _sysctl_path("net.ipv4.ip_forward").write_text("1")
    _sysctl_path("net.bridge.bridge-nf-call-iptables").write_text("1")
    _guard()


def _guard() -> None:
    run("iptables", "-w", "-N", GUARD_CHAIN, check=False)
    run("iptables", "-w", "-F", GUARD_CHAIN)
    comment = ["-m", "comment", "--comment"]
    rules = [
        ["-i", BRIDGE, "-o", BRIDGE, *comment, "pod to pod over the bridge", "-j", "ACCEPT"],
        ["-s", POD_CIDR, *comment, "nothing from a pod leaves this machine", "-j", "DROP"],
        ["-i", BRIDGE, *comment, "nothing from a pod leaves this machine", "-j", "DROP"],
        ["-d", POD_CIDR, *comment, "nothing from elsewhere reaches a pod", "-j", "DROP"],
        ["-o", BRIDGE, *comment, "nothing from elsewhere reaches a pod", "-j", "DROP"],
    ]
    for rule in rules:
        run("iptables", "-w", "-A", GUARD_CHAIN, *rule)
    if run("iptables", "-w", "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
        run("iptables", "-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def guard_drops() -> int:
    """Packets the guard has dropped so far (the sum of its DROP rules' counters)."""
    listing = run("iptables", "-w", "-L", GUARD_CHAIN, "-n", "-v", "-x").stdout
    return sum(int(line.split()[0]) for line in listing.splitlines() if " DROP " in f" {line} ")


# --- processes --------------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def our_processes(bin_root: Path) -> dict[int, str]:
    """pid -> executable of every process running a binary from the build cache."""
    prefix = str(bin_root.resolve()) + "/"
    return {pid: exe for pid in _pids() if (exe := _exe(pid)).startswith(prefix)}


def _cgroup_dirs() -> list[Path]:
    """The pods' cgroup directories (kubelet's kubepods tree under every v1 hierarchy), deepest first."""
    found: list[Path] = []
    if CGROUP_ROOT.is_dir():
        for hierarchy in CGROUP_ROOT.iterdir():
            top = hierarchy / "kubepods"
            if top.is_dir():
                found.extend(Path(path) for path, _, _ in os.walk(top))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def pod_processes() -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs():
        try:
            pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
        except OSError:
            continue
    return pids


def stop(pids: set[int] | list[int], grace: float) -> None:
    """SIGTERM, then SIGKILL for whatever is still alive after `grace` seconds; then up to 5 s for
    init to reap them (our daemons are its orphans), so no `<defunct>` entry outlives cluster-down."""
    pending = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(pending):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pending.discard(pid)
        deadline = time.monotonic() + grace
        while pending and time.monotonic() < deadline:
            pending = {pid for pid in pending if _alive(pid)}
            time.sleep(0.1)
        if not pending:
            break
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- leftovers ------------------------------------------------------------------------------


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith((str(RUNTIME_DIR) + "/", str(STATE_DIR) + "/")) or point in (str(RUNTIME_DIR),):
            points.append(point)
    return points


def _chains(binary: str) -> dict[str, list[str]]:
    """table -> our chains ('-N' names) in that table, for iptables or ip6tables."""
    chains: dict[str, list[str]] = {}
    for table in ("filter", "nat", "mangle", "raw"):
        listing = run(binary, "-w", "-t", table, "-S", check=False).stdout
        names = [line.split()[1] for line in listing.splitlines() if line.startswith("-N ")]
        ours = [name for name in names if name.startswith(CHAIN_PREFIXES)]
        if ours:
            chains[table] = ours
    return chains


def _nft_tables() -> list[str]:
    listing = run("nft", "list", "tables", check=False).stdout if _has("nft") else ""
    return [f"{family} {name}" for family, name in NFT_TABLES if f"table {family} {name}" in listing]


def _has(binary: str) -> bool:
    return any((Path(directory) / binary).exists() for directory in os.environ.get("PATH", "").split(":"))


def _interfaces() -> list[str]:
    links = run("ip", "-o", "link", "show").stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in links]
    return [name for name in names if name == BRIDGE or f"master {BRIDGE} " in _link(name, links)]


def _link(name: str, links: list[str]) -> str:
    return next((line for line in links if line.split(":")[1].strip().split("@")[0] == name), "")


def leftovers(bin_root: Path) -> dict[str, list[str]]:
    """What of a cluster exists now, by kind (empty lists when nothing does)."""
    lo = run("ip", "-4", "addr", "show", "dev", "lo").stdout
    found = {
        "processes": [f"{pid} {exe}" for pid, exe in our_processes(bin_root).items()],
        "pod processes": [str(pid) for pid in sorted(pod_processes())],
        "mounts": _mounts(),
        "interfaces": _interfaces(),
        "iptables": [f"{table}/{chain}" for table, chains in _chains("iptables").items() for chain in chains],
        "ip6tables": [f"{table}/{chain}" for table, chains in _chains("ip6tables").items() for chain in chains],
        "nftables": _nft_tables(),
        "cgroups": [str(path) for path in _cgroup_dirs()],
        "addresses": [f"{NODE_IP} on lo"] if f"{NODE_IP}/" in lo else [],
    }
    return {kind: items for kind, items in found.items() if items}


# --- clean ----------------------------------------------------------------------------------


def unmount_all() -> None:
    for point in sorted(_mounts(), key=lambda p: p.count("/"), reverse=True):
        if run("umount", point, check=False).returncode != 0:
            run("umount", "-l", point, check=False)


def _drop_chains(binary: str) -> None:
    for table, chains in _chains(binary).items():
        ours = set(chains)
        for line in run(binary, "-w", "-t", table, "-S").stdout.splitlines():
            parts = line.split()
            if parts[0] == "-A" and parts[1] not in ours and "-j" in parts and parts[parts.index("-j") + 1] in ours:
                # A jump from a chain not ours (FORWARD, PREROUTING, ...) into one of ours.
                run(binary, "-w", "-t", table, "-D", *_unquote(line[3:]), check=False)
        for chain in chains:
            run(binary, "-w", "-t", table, "-F", chain, check=False)
        for chain in chains:
            run(binary, "-w", "-t", table, "-X", chain, check=False)


def _unquote(rule: str) -> list[str]:
    """`iptables -S` output back into arguments (comments are quoted there)."""
    return [part.strip('"') for part in re.findall(r'"[^"]*"|\S+', rule)]


def clean_network() -> None:
    for netns in sorted((RUNTIME_DIR / "containerd" / "netns").glob("*")) if RUNTIME_DIR.exists() else []:
        run("umount", str(netns), check=False)
        netns.unlink(missing_ok=True)
    for name in _interfaces():
        run("ip", "link", "delete", name, check=False)
    _drop_chains("iptables")
    _drop_chains("ip6tables")
    for table in _nft_tables():
        run("nft", "delete", "table", *table.split(), check=False)
    run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False)


def clean_cgroups() -> None:
    for _ in range(20):
        stop(pod_processes(), grace=0.5)
        for directory in _cgroup_dirs():
            with contextlib.suppress(OSError):  # busy until its last process is reaped
                directory.rmdir()
        if not _cgroup_dirs():
            return
        time.sleep(0.5)


def restore_sysctls() -> None:
    if not SYSCTL_RECORD.exists():
        return
    for name, value in json.loads(SYSCTL_RECORD.read_text()).items():
        with contextlib.suppress(OSError):  # a sysctl this kernel lacks
            _sysctl_path(name).write_text(value)
    SYSCTL_RECORD.unlink()


def clean_pod_logs() -> None:
    """The pods' logs, and the kubelet's links to them in /var/log/containers (only those into ours)."""
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(POD_LOGS) + "/"):
                link.unlink()
    shutil.rmtree(POD_LOGS, ignore_errors=True)
