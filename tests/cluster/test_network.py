"""The local cluster's network: pods reach Services and the node, nothing leaves the machine,
and NetworkPolicies are accepted but NOT enforced (the CNI bridge plugin has no policy engine).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.cluster import LocalCluster, Release, guard_drops, run_pod, unique

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)

PROBE_NAMESPACE = "catalog-cluster-probe"
# An address outside this machine (TEST-NET-3, RFC 5737), which the host would route to its gateway.
OUTSIDE = ("203.0.113.7", 443)

CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(4)
try:
    s.connect(({host!r}, {port}))
except OSError as error:
    print("refused-or-timeout", type(error).__name__, error)
    sys.exit(3)
print("connected")
"""


@pytest.fixture(scope="module")
def probe_namespace(local_cluster: LocalCluster, cluster_image: str) -> Iterator[str]:
    local_cluster.kubectl("create", "namespace", PROBE_NAMESPACE, check=False)
    yield PROBE_NAMESPACE
    local_cluster.kubectl("delete", "namespace", PROBE_NAMESPACE, "--wait=false", check=False)


def test_a_pod_cannot_reach_an_address_outside_this_machine(local_cluster: LocalCluster, probe_namespace: str) -> None:
    before = guard_drops()
    phase, log = run_pod(
        local_cluster, probe_namespace, unique("egress"), CONNECT.format(host=OUTSIDE[0], port=OUTSIDE[1])
    )
    assert phase == "Failed", log
    assert "refused-or-timeout" in log, log
    # It was our forwarding guard that stopped it (not a missing route): its DROP counters moved.
    assert guard_drops() > before


def test_a_pod_resolves_and_reaches_the_api_service(release: Release, probe_namespace: str) -> None:
    service = f"{release.resource('api')}.{release.namespace}.svc.cluster.local"
    code = f"""
import urllib.request
print(urllib.request.urlopen("http://{service}/readyz", timeout=5).status)
"""
    phase, log = run_pod(release.cluster, probe_namespace, unique("dns"), code)
    assert phase == "Succeeded", log
    assert log.strip().endswith("200"), log


def test_network_policies_are_accepted_but_not_enforced(release: Release, probe_namespace: str) -> None:
    """The chart's policies let only the ingress controller's namespace reach the API. The bridge CNI
    ignores them: a pod in another namespace still gets through. This cluster proves the objects are
    valid, not that they are enforced; that needs a policy-enforcing CNI (Calico, Cilium)."""
    policies = release.cluster.json("-n", release.namespace, "get", "networkpolicies")["items"]
    names = {policy["metadata"]["name"] for policy in policies}
    assert {release.resource("api"), release.resource("worker")} <= names, names
    pod_ip = release.pods("api")[0]["status"]["podIP"]
    phase, log = run_pod(release.cluster, probe_namespace, unique("netpol"), CONNECT.format(host=pod_ip, port=8000))
    assert phase == "Succeeded", f"the bridge CNI enforced a NetworkPolicy after all? {log}"
    print(f"NOT ENFORCED: a pod in {probe_namespace} connected to {pod_ip}:8000 despite the API's NetworkPolicy")
