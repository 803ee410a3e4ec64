"""Render the Helm chart with the real helm binary and look at the result.

helm comes from `deploy/local/tools.sh` (`make tools`): a helm v3.14+/v4 on
PATH, or the pinned helm v4 it unpacks into .tools/bin. The tests never mock it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

CHART = ROOT / "deploy" / "helm" / "catalog"
SCENARIOS = sorted(CHART.glob("ci/*-values.yaml"))
RELEASE = "rel"
NAMESPACE = "shop"
# What a cluster with prometheus-operator, KEDA and the Gateway API CRDs reports.
ALL_CRDS = (
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1",
    "keda.sh/v1alpha1/ScaledObject",
    "keda.sh/v1alpha1/TriggerAuthentication",
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1/HTTPRoute",
)
# Kubernetes minors the rendered objects are validated against (kubernetes-validate schemas).
KUBERNETES_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")

Manifest = dict[str, Any]


@functools.cache
def helm_binary() -> str:
    """The helm the project's own tooling provides (installing it when needed)."""
    if explicit := os.environ.get("HELM"):
        return explicit
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "local" / "tools.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"deploy/local/tools.sh could not provide helm:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False, cwd=ROOT)


def _flags(values_files: Iterable[Path], set_values: Mapping[str, object], api_versions: Iterable[str]) -> list[str]:
    flags: list[str] = []
    for path in values_files:
        flags += ["--values", str(path)]
    for key, value in set_values.items():
        flags += ["--set-json", f"{key}={json.dumps(value)}"]
    for api in api_versions:
        flags += ["--api-versions", api]
    return flags


def template(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, object] | None = None,
    api_versions: Iterable[str] = ALL_CRDS,
    release: str = RELEASE,
) -> subprocess.CompletedProcess[str]:
    return helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        NAMESPACE,
        *_flags(values_files, set_values or {}, api_versions),
    )


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` produced."""

    objects: tuple[Manifest, ...]
    text: str

    def kinds(self) -> set[str]:
        return {obj["kind"] for obj in self.objects}

    def all(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        matches = [obj for obj in self.all(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)} in {sorted(self.names())}"
        return matches[0]

    def has(self, kind: str, name: str) -> bool:
        return any(obj["metadata"]["name"] == name for obj in self.all(kind))

    def names(self) -> Iterator[str]:
        return (f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects)


def render(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, object] | None = None,
    api_versions: Iterable[str] = ALL_CRDS,
    release: str = RELEASE,
) -> Rendered:
    return parse(template(values_files, set_values, api_versions, release))


def parse(result: subprocess.CompletedProcess[str]) -> Rendered:
    """The objects of a successful `helm template` run."""
    assert result.returncode == 0, result.stderr
    objects = tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)
    return Rendered(objects, result.stdout)


def name(component: str = "") -> str:
    base = f"{RELEASE}-catalog"
    return f"{base}-{component}" if component else base


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest, container_name: str) -> Manifest:
    matches = [c for c in pod_spec(workload)["containers"] if c["name"] == container_name]
    assert len(matches) == 1
    found: Manifest = matches[0]
    return found


def env(workload: Manifest, container_name: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(workload, container_name).get("env", [])}
