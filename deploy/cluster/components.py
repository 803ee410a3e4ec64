"""The command line of each cluster component, one function per component (stdlib only).

Every function takes the `Layout` (where the binaries, certificates, configs
and state are) and returns the argv to start. Flags follow what Kubernetes'
hack/local-up-cluster.sh passes, narrowed to one node on fixed addresses: the
API server, kubelet and kube-proxy on the node address (198.19.255.1 on `lo`),
etcd and the controllers' own ports on 127.0.0.1 only, so a pod (which can
reach the node address) cannot reach etcd.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import host

NODE_NAME = "catalog-node"
API_PORT = 6443


@dataclass(frozen=True)
class Layout:
    """Directories of one cluster: `run` is the clone's .run/cluster (certificates, configs, logs)."""

    bins: dict[str, Path]  # family -> bin directory in the build cache
    run: Path

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    def bin(self, family: str, name: str) -> str:
        return str(self.bins[family] / name)

    @property
    def containerd_socket(self) -> Path:
        return host.RUNTIME_DIR / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return host.STATE_DIR / "kubelet"

    @property
    def containerd_root(self) -> Path:
        return host.STATE_DIR / "containerd"

    @property
    def etcd_data(self) -> Path:
        return self.run / "etcd"

    def kubeconfig(self, who: str) -> str:
        return str(self.run / f"{who}.kubeconfig")


def etcd(layout: Layout) -> list[str]:
    return [
        layout.bin("etcd", "etcd"),
        "--name=catalog-node",
        f"--data-dir={layout.etcd_data}",
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=catalog-node=http://127.0.0.1:2380",
        "--listen-metrics-urls=",
        # One node on a shared disk: fsync latency spikes should not cost a leader election.
        "--heartbeat-interval=500",
        "--election-timeout=5000",
        "--quota-backend-bytes=1073741824",
        "--log-level=warn",
    ]


def kube_apiserver(layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        layout.bin("kubernetes", "kube-apiserver"),
        "--etcd-servers=http://127.0.0.1:2379",
        f"--bind-address={host.NODE_IP}",
        f"--advertise-address={host.NODE_IP}",
        f"--secure-port={API_PORT}",
        f"--service-cluster-ip-range={host.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # PodSecurity is on by default; named so a reader sees it, with NodeRestriction for the Node authorizer.
        "--enable-admission-plugins=NodeRestriction,PodSecurity",
        "--allow-privileged=false",
        f"--client-ca-file={pki}/ca.crt",
        f"--tls-cert-file={pki}/apiserver.crt",
        f"--tls-private-key-file={pki}/apiserver.key",
        f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
        f"--kubelet-certificate-authority={pki}/ca.crt",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki}/sa.pub",
        f"--service-account-signing-key-file={pki}/sa.key",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        # The aggregation layer: requests for APIServices (metrics.k8s.io, external.metrics.k8s.io)
        # go to their pods' IPs with the caller's identity in these headers, signed by front-proxy-client.
        f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
        f"--proxy-client-key-file={pki}/front-proxy-client.key",
        "--enable-aggregator-routing=true",
        "--profiling=false",
        "--v=1",
    ]


def _controller_auth(layout: Layout, who: str) -> list[str]:
    kubeconfig = layout.kubeconfig(who)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        # Its self-signed serving certificate goes here, not to the default /var/run/kubernetes.
        f"--cert-dir={layout.pki}/{who}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def kube_controller_manager(layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        layout.bin("kubernetes", "kube-controller-manager"),
        *_controller_auth(layout, "controller-manager"),
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki}/sa.key",
        f"--root-ca-file={pki}/ca.crt",
        f"--cluster-signing-cert-file={pki}/ca.crt",
        f"--cluster-signing-key-file={pki}/ca.key",
        f"--service-cluster-ip-range={host.SERVICE_CIDR}",
        # The CNI's host-local IPAM hands out the pod range; the node needs no podCIDR.
        "--allocate-node-cidrs=false",
        "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
    ]


def kube_scheduler(layout: Layout) -> list[str]:
    return [layout.bin("kubernetes", "kube-scheduler"), *_controller_auth(layout, "scheduler")]


def containerd(layout: Layout) -> list[str]:
    return [layout.bin("containerd", "containerd"), f"--config={layout.run}/containerd.toml"]


def kubelet(layout: Layout) -> list[str]:
    return [
        layout.bin("kubernetes", "kubelet"),
        f"--config={layout.run}/kubelet.yaml",
        f"--kubeconfig={layout.kubeconfig('kubelet')}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={host.NODE_IP}",
        f"--root-dir={layout.kubelet_root}",
        "--v=1",
    ]


def kube_proxy(layout: Layout) -> list[str]:
    return [layout.bin("kubernetes", "kube-proxy"), f"--config={layout.run}/kube-proxy.yaml", "--v=1"]


# Start order; cluster-down stops them in reverse (the kubelet before the control plane).
ORDER = (
    ("etcd", etcd),
    ("kube-apiserver", kube_apiserver),
    ("kube-controller-manager", kube_controller_manager),
    ("kube-scheduler", kube_scheduler),
    ("containerd", containerd),
    ("kubelet", kubelet),
    ("kube-proxy", kube_proxy),
)
