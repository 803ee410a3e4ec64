"""PodDisruptionBudget on the local cluster: with the node cordoned (as a drain does), the Eviction
API lets one API pod go (maxUnavailable 1) and refuses the next with 429 while the replacement cannot
be scheduled; uncordoning lets the replacement run and the Service answers again from 2 pods.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fixtures.cluster import Release, eventually

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)


def _evict(release: Release, pod: str) -> tuple[int, str]:
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": release.namespace}}
    path = f"/api/v1/namespaces/{release.namespace}/pods/{pod}/eviction"
    result = release.cluster.run("create", "--raw", path, "-f", "-", stdin=json.dumps(body))
    if result.returncode == 0:
        return 201, result.stdout
    code = 429 if "TooManyRequests" in result.stderr or "disruption budget" in result.stderr else 0
    return code, result.stderr


def test_eviction_is_refused_once_the_budget_is_spent(release: Release) -> None:
    node = release.pods("api")[0]["spec"]["nodeName"]
    pods = [pod["metadata"]["name"] for pod in release.pods("api")]
    assert len(pods) == 2, pods
    release.cluster.kubectl("cordon", node)
    try:
        first = _evict(release, pods[0])
        assert first[0] == 201, first
        second = _evict(release, pods[1])
        print(f"eviction of {pods[0]}: {first[0]}; of {pods[1]}: {second[0]} {second[1].strip()}")
        assert second[0] == 429, second
        assert "disruption budget" in second[1], second[1]
    finally:
        release.cluster.kubectl("uncordon", node)

    def restored() -> str | None:
        deployment = release.cluster.json("-n", release.namespace, "get", "deployment", release.resource("api"))
        available = deployment["status"].get("availableReplicas", 0)
        return None if available == 2 else f"{available} available"

    eventually(restored, "the API back to 2 available pods after uncordon", timeout=240, every=2)
    assert httpx.get(f"{release.service_url()}/readyz", timeout=5).status_code == 200
