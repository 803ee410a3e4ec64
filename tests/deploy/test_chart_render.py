"""The chart lints, renders with the defaults and every ci/ scenario, and every
object it renders is valid for three recent Kubernetes minors (and, for the
operator kinds, for the CRDs of prometheus-operator, KEDA and the Gateway API).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.fixtures.chart import CHART, KUBERNETES_VERSIONS, SCENARIOS, Manifest, helm, render
from tests.fixtures.paths import ROOT

SCENARIO_IDS = [path.name for path in SCENARIOS]
# Upstream CRD schemas are data we read, not ship: CRD_SCHEMA_DIR, else a `shared/schemas/crds`
# folder beside the clone (where our CI lays one); without them those tests skip and say so.
CRD_SCHEMA_DIR = Path(os.environ.get("CRD_SCHEMA_DIR", ROOT.parent / "shared" / "schemas" / "crds"))
# The values the README's kind walkthrough installs with.
KIND_VALUES = ROOT / "deploy" / "kind" / "catalog-values.yaml"
# What `tilt up` adds on top of them (the Tiltfile passes both, in this order).
DEV_VALUES = ROOT / "deploy" / "kind" / "dev-values.yaml"
CORE_GROUPS = ("v1", "apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/")


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 4, "ci/*-values.yaml holds one scenario per feature"


def test_lint_strict_with_defaults() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_lint_strict_with_scenario(scenario: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "--values", str(scenario))
    assert result.returncode == 0, result.stdout + result.stderr


def _all_renders() -> list[tuple[str, tuple[Manifest, ...]]]:
    renders = [("defaults", render().objects)]
    renders += [(path.name, render([path]).objects) for path in SCENARIOS]
    renders.append((KIND_VALUES.name, render([KIND_VALUES]).objects))
    renders.append((DEV_VALUES.name, render([KIND_VALUES, DEV_VALUES]).objects))
    renders.append(
        (f"{DEV_VALUES.name} with KEDA", render([KIND_VALUES, DEV_VALUES], {"worker.keda.enabled": True}).objects)
    )
    return renders


@functools.cache
def _renders() -> list[tuple[str, tuple[Manifest, ...]]]:
    return _all_renders()


def test_every_scenario_renders_objects() -> None:
    for label, objects in _renders():
        kinds = {obj["kind"] for obj in objects}
        assert {"Deployment", "Service", "ConfigMap"} <= kinds, label


def _is_core(obj: Manifest) -> bool:
    api_version: str = obj["apiVersion"]
    return api_version == "v1" or api_version.startswith(CORE_GROUPS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_are_valid_for_kubernetes(version: str) -> None:
    checked = 0
    for label, objects in _renders():
        for obj in objects:
            if not _is_core(obj):
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{label}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {error.message}")
            checked += 1
    assert checked > 50


def test_invalid_objects_are_caught_by_the_validator() -> None:
    """The validation above can fail: a misspelt field in a Deployment is refused."""
    deployment = next(obj for obj in render().objects if obj["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """A CRD schema that also refuses unknown fields (the API server would prune them silently)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], Any]:
    schemas: dict[tuple[str, str], Any] = {}
    for path in sorted(CRD_SCHEMA_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # metadata is validated by Kubernetes itself, not by the CRD.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


needs_crds = pytest.mark.skipif(
    not any(CRD_SCHEMA_DIR.glob("*.yaml")),
    reason=f"no CRD schemas in {CRD_SCHEMA_DIR} (set CRD_SCHEMA_DIR to a directory of CRD YAML files)",
)


@needs_crds
def test_custom_resources_match_their_crds() -> None:
    schemas = _crd_schemas()
    seen: set[str] = set()
    for label, objects in _renders():
        for obj in objects:
            if _is_core(obj):
                continue
            key = (obj["apiVersion"], obj["kind"])
            assert key in schemas, f"{label}: no CRD schema for {key} in {CRD_SCHEMA_DIR}"
            errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(obj), key=str)
            assert not errors, f"{label}: {obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
            )
            seen.add(obj["kind"])
    expected = {"ServiceMonitor", "PodMonitor", "ScaledObject", "TriggerAuthentication", "HTTPRoute"}
    if any((CHART / "files" / "prometheus" / "rules").glob("*.yaml")):
        expected.add("PrometheusRule")
    assert expected <= seen


@needs_crds
def test_crd_validation_catches_a_misspelt_field() -> None:
    scaled = next(obj for obj in render([CHART / "ci" / "keda-values.yaml"]).objects if obj["kind"] == "ScaledObject")
    broken = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}
    schema = _crd_schemas()[(scaled["apiVersion"], "ScaledObject")]
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))
