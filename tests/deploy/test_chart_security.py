"""Every pod the chart can render (api, worker, migrations; defaults and every
scenario) meets the Pod Security Standard "restricted" profile."""

from __future__ import annotations

import functools

import pytest

from tests.fixtures.chart import SCENARIOS, Manifest, render

WORKLOAD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@functools.cache
def _pods() -> list[tuple[str, Manifest]]:
    renders = [("defaults", render())] + [(path.name, render([path])) for path in SCENARIOS]
    return [
        (f"{label}: {obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
        for label, rendered in renders
        for obj in rendered.objects
        if obj["kind"] in WORKLOAD_KINDS
    ]


def test_every_workload_kind_is_covered() -> None:
    names = {label.split(": ")[1].rsplit("-", 1)[-1] for label, _ in _pods()}
    assert {"api", "worker", "migrations"} <= names


@pytest.mark.parametrize("field", ["hostNetwork", "hostPID", "hostIPC"])
def test_no_host_namespaces(field: str) -> None:
    for label, pod in _pods():
        assert not pod.get(field), label


def test_restricted_pod_and_container_security_contexts() -> None:
    for label, pod in _pods():
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, label
        assert pod_context.get("runAsUser", 1) != 0, label
        assert pod_context.get("seccompProfile", {}).get("type") in {"RuntimeDefault", "Localhost"}, label
        assert pod.get("automountServiceAccountToken") is False, label
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container.get("securityContext", {})
            where = f"{label} container {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged", False) is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert context.get("runAsUser", 1) != 0, where
            assert not any(port.get("hostPort") for port in container.get("ports", [])), where


def test_only_restricted_volume_types_and_a_writable_tmp() -> None:
    for label, pod in _pods():
        for volume in pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{label}: volume {volume['name']} is {kinds}"
        for container in pod["containers"]:
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{label}: read-only root needs a writable /tmp"


def test_every_container_has_requests_and_a_memory_limit_equal_to_the_request() -> None:
    for label, pod in _pods():
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), label
            assert resources["limits"]["memory"] == resources["requests"]["memory"], label
