"""`helm install` on the local Kubernetes (deploy/cluster): what a user meets in the first hour.

The release goes into a namespace that enforces the restricted Pod Security
Standard; the API server admits (or refuses) every pod, validates and defaults
every object, runs the migration hook before the Deployments, and the kubelet
runs the probes. Runs where `make cluster` can start (root, Go); skips otherwise.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest
import yaml

from tests.fixtures.cluster import Release, eventually

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)

WARNING = re.compile(r"^(W\d{4} |.*\bwarning\b)", re.IGNORECASE | re.MULTILINE)


def test_helm_install_printed_no_warning(release: Release) -> None:
    """No admission (PodSecurity warn/audit), deprecation or validation warning reached helm."""
    warnings = WARNING.findall(release.install_output)
    assert not warnings, release.install_output
    print(
        f"helm install --wait took {release.install_seconds:.0f} s; monitoring CRDs applied: {release.monitoring_crds}"
    )


def test_namespace_enforces_restricted_and_refuses_a_pod_that_is_not(release: Release) -> None:
    """The release's pods were admitted under `restricted`; a pod with no security context is refused."""
    labels = release.cluster.json("get", "namespace", release.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    plain = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain", "namespace": release.namespace},
        "spec": {"containers": [{"name": "c", "image": "catalog:image-test"}]},
    }
    refused = release.cluster.run("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(plain))
    assert refused.returncode != 0, refused.stdout
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
    for rule in ("allowPrivilegeEscalation != false", "runAsNonRoot != true", "seccompProfile"):
        assert rule in refused.stderr, refused.stderr


def _objects(text: str) -> list[tuple[str, str]]:
    found = []
    for document in yaml.safe_load_all(text):
        if document and "kind" in document:
            found.append((document["kind"], document["metadata"]["name"]))
    return found


def test_every_rendered_object_exists(release: Release) -> None:
    manifest = release.cluster.helm("get", "manifest", release.name, "--namespace", release.namespace).stdout
    hooks = release.cluster.helm("get", "hooks", release.name, "--namespace", release.namespace).stdout
    objects = _objects(manifest)
    assert len(objects) >= 8, manifest[:2000]
    missing = []
    for kind, name in objects:
        got = release.cluster.kubectl("-n", release.namespace, "get", kind, name, "-o", "name", check=False)
        if not got.strip():
            missing.append(f"{kind}/{name}")
    assert not missing, missing
    # Hooks: the migration Job is kept after success (before-hook-creation), its Secret deleted on success.
    kinds = {kind for kind, _ in _objects(hooks)}
    assert "Job" in kinds, hooks[:2000]


def test_migration_hook_job_completed(release: Release) -> None:
    jobs = release.cluster.json(
        "-n", release.namespace, "get", "jobs", "-l", f"app.kubernetes.io/instance={release.name}"
    )["items"]
    assert jobs, "the migration Job is kept after success"
    for job in jobs:
        conditions = {c["type"]: c["status"] for c in job["status"].get("conditions", [])}
        assert conditions.get("Complete") == "True", job["status"]


def test_api_and_worker_available_with_restricted_pods(release: Release) -> None:
    for component in ("api", "worker"):
        deployment = release.cluster.json("-n", release.namespace, "get", "deployment", release.resource(component))
        conditions = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
        assert conditions["Available"] == "True", deployment["status"]
        assert deployment["status"]["availableReplicas"] == deployment["spec"]["replicas"]
        for pod in release.pods(component):
            spec: dict[str, Any] = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            status = pod["status"]
            print(f"{pod['metadata']['name']}: {status['phase']} on {pod['spec']['nodeName']} ({status['podIP']})")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_no_probe_failed_after_a_pod_was_ready(release: Release) -> None:
    pods = {pod["metadata"]["name"]: pod for component in ("api", "worker") for pod in release.pods(component)}
    ready_at = {}
    for name, pod in pods.items():
        [ready] = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["status"] == "True", pod["status"]
        ready_at[name] = _time(ready["lastTransitionTime"])
    events = release.cluster.json("-n", release.namespace, "get", "events", "--field-selector", "reason=Unhealthy")[
        "items"
    ]
    late = [
        f"{e['involvedObject']['name']}: {e['message']}"
        for e in events
        if e["involvedObject"]["name"] in ready_at
        and _time(e.get("lastTimestamp") or e["eventTime"]) > ready_at[e["involvedObject"]["name"]]
    ]
    assert not late, late


def test_hpa_reads_cpu_from_metrics_server(release: Release) -> None:
    """The controller works on the HPA with CPU from the platform's metrics-server (make platform)."""

    def status() -> dict[str, Any]:
        hpa = release.cluster.json("-n", release.namespace, "get", "hpa", release.resource("api"))
        assert hpa["spec"]["scaleTargetRef"]["name"] == release.resource("api")
        return dict(hpa.get("status", {}))

    def conditions() -> dict[str, dict[str, str]]:
        return {c["type"]: c for c in status().get("conditions", [])}

    eventually(
        lambda: None if conditions().get("ScalingActive", {}).get("status") == "True" else str(conditions()),
        "the HPA controller reads the pods' CPU (ScalingActive)",
        timeout=180,
        every=5,
    )
    assert conditions()["AbleToScale"]["status"] == "True"
    [metric] = status()["currentMetrics"]
    assert metric["resource"]["name"] == "cpu"
    print(f"HPA: CPU {metric['resource']['current'].get('averageUtilization')} % of the request, "
          f"{status().get('currentReplicas')} replicas")  # fmt: skip


def _helm_test(release: Release) -> tuple[int, str]:
    result = release.cluster.helm("test", release.name, "--namespace", release.namespace, "--logs", "--timeout",
                                  "300s", timeout=400)  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_helm_test_passes_through_the_service(release: Release) -> None:
    code, output = _helm_test(release)
    assert code == 0, output
    assert "/readyz: 200" in output, output
    assert "Phase:          Succeeded" in output or "Phase: Succeeded" in output.replace("  ", " "), output


def test_helm_test_fails_with_the_last_answer_when_no_api_pod_is_ready(release: Release) -> None:
    api = f"deployment/{release.resource('api')}"
    replicas = release.cluster.json("-n", release.namespace, "get", api)["spec"]["replicas"]
    # At 0 replicas the HPA stands aside (Kubernetes disables autoscaling for a target scaled to 0).
    release.cluster.kubectl("-n", release.namespace, "scale", api, "--replicas=0")
    try:
        eventually(lambda: None if not release.pods("api") else str(len(release.pods("api"))), "API pods gone",
                   timeout=180, every=2)  # fmt: skip
        code, output = _helm_test(release)
    finally:
        release.cluster.kubectl("-n", release.namespace, "scale", api, f"--replicas={replicas}")
        release.cluster.kubectl("-n", release.namespace, "rollout", "status", api, "--timeout=300s", timeout=330)
    assert code != 0, output
    assert "not ready within" in output, output
    # Kept on purpose (hook-delete-policy: hook-succeeded), and helm uninstall leaves hooks alone:
    # removed here, as a user does once they have read its log.
    pod = release.resource("helm-test")
    assert release.cluster.kubectl("-n", release.namespace, "get", "pod", pod, "-o", "name").strip() == f"pod/{pod}"
    release.cluster.kubectl("-n", release.namespace, "delete", "pod", pod, "--wait=true")
    print(output[-600:])
