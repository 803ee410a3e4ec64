"""Every generated name fits Kubernetes' limits, for any release name helm accepts.

helm accepts release names of up to 53 characters matching
`[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`; the chart
appends "-catalog" and a component suffix. Kubernetes refuses a Service whose
name is not a DNS-1035 label (63 characters, starting with a letter, no dots),
a Job whose name does not fit the `job-name` label value (63), and any label
value over 63 characters. The chart keeps every name it generates a DNS-1035
label of at most 63 characters (cut + hash when longer), so one rule covers all.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures import chart
from tests.fixtures.chart import CHART, Manifest, Rendered, pod_spec

DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_LIMIT = 63
MAX_RELEASE = 53

# The longest release names helm accepts, in each shape that changes how the name is built.
LONG_RELEASES = {
    "letters": "r" + "x" * (MAX_RELEASE - 2) + "z",
    "dots": ".".join(["release"] * 6) + "-a.b.c",  # 53 characters with dots, which Services may not hold
    "leading-digit": "1" + "x" * (MAX_RELEASE - 1),  # a Service name must start with a letter
    "contains-chart-name": "catalog" + "x" * (MAX_RELEASE - 7),  # fullname is then the release alone
    "dashes": "a" + "-" * (MAX_RELEASE - 2) + "b",
}
# Values that switch on every object the chart can render (with ALL_CRDS): ingress, KEDA,
# monitoring (scrape, rules, dashboards), and secrets given as values (the chart's own Secrets).
EVERYTHING = {
    "secrets.databaseUrl": "postgresql://catalog@db.example.internal/catalog",
    "secrets.redisUrl": "redis://cache.example.internal:6379/0",
    "ingress.enabled": True,
    "worker.keda.enabled": True,
    "monitoring.scrape.enabled": True,
    "monitoring.rules.enabled": True,
    "monitoring.dashboards.enabled": True,
    "database.connectionBudget": 1000,
}
ROUTE = {**EVERYTHING, "ingress.enabled": False, "httpRoute.enabled": True}


def _label_maps(obj: Manifest) -> list[dict[str, str]]:
    maps = [obj["metadata"].get("labels") or {}]
    spec = obj.get("spec") or {}
    if isinstance(spec.get("selector"), dict):
        maps.append(spec["selector"].get("matchLabels") or spec["selector"])
    template = spec.get("template") or {}
    if isinstance(template, dict) and "metadata" in template:
        maps.append(template["metadata"].get("labels") or {})
    return [m for m in maps if all(isinstance(v, str) for v in m.values())]


def _references(rendered: Rendered) -> list[tuple[str, str, str]]:
    """(referring object, kind referred to, name) for every by-name reference between rendered objects."""
    refs: list[tuple[str, str, str]] = []
    for obj in rendered.objects:
        who = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec") or {}
        if obj["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}:
            target = spec["scaleTargetRef"]
            refs.append((who, target.get("kind", "Deployment"), target["name"]))  # KEDA defaults to a Deployment
        if obj["kind"] == "ScaledObject":
            for trigger in spec["triggers"]:
                refs.append((who, "TriggerAuthentication", trigger["authenticationRef"]["name"]))
        if obj["kind"] == "HTTPRoute":
            refs += [(who, "Service", ref["name"]) for rule in spec["rules"] for ref in rule["backendRefs"]]
        if obj["kind"] == "Ingress":
            for rule in spec["rules"]:
                refs += [(who, "Service", path["backend"]["service"]["name"]) for path in rule["http"]["paths"]]
        if obj["kind"] in {"Deployment", "Job"}:
            refs += [(who, kind, name) for kind, name in _pod_references(pod_spec(obj))]
    return refs


def _pod_references(pod: Manifest) -> list[tuple[str, str]]:
    refs = [("ServiceAccount", pod["serviceAccountName"])] if "serviceAccountName" in pod else []
    for source in (source for c in pod["containers"] for source in c.get("envFrom", [])):
        if "configMapRef" in source:
            refs.append(("ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            refs.append(("Secret", source["secretRef"]["name"]))
    return refs


def _check_names(rendered: Rendered) -> None:
    problems = []
    for obj in rendered.objects:
        name = obj["metadata"]["name"]
        where = f"{obj['kind']}/{name} ({len(name)} characters)"
        if len(name) > LABEL_LIMIT or not DNS_1035_LABEL.fullmatch(name):
            problems.append(f"{where}: not a DNS-1035 label of at most 63 characters")
        for labels in _label_maps(obj):
            for key, value in labels.items():
                if len(value) > LABEL_LIMIT or not LABEL_VALUE.fullmatch(value):
                    problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    counts = Counter((o["kind"], o["metadata"]["name"]) for o in rendered.objects)
    problems += [f"{kind}/{name} rendered {n} times" for (kind, name), n in counts.items() if n > 1]
    for who, kind, name in _references(rendered):
        if not rendered.has(kind, name):
            problems.append(f"{who} refers to {kind}/{name}, which is not rendered")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("shape", sorted(LONG_RELEASES))
def test_longest_release_names_give_valid_names(shape: str) -> None:
    release = LONG_RELEASES[shape]
    assert len(release) == MAX_RELEASE
    rendered = chart.render(set_values=EVERYTHING, release=release)
    # Every kind this render was meant to cover is there.
    assert {"Service", "Job", "Deployment", "ScaledObject", "Ingress", "ConfigMap", "Secret"} <= rendered.kinds()
    _check_names(rendered)
    route = chart.render(set_values=ROUTE, release=release)
    assert "HTTPRoute" in route.kinds()
    _check_names(route)


def test_the_longest_names_stay_distinct_and_keep_their_component() -> None:
    # Two releases that differ only in their last character: cut names must not collide.
    first = chart.render(set_values=EVERYTHING, release="r" + "x" * 51 + "a")
    second = chart.render(set_values=EVERYTHING, release="r" + "x" * 51 + "b")
    first_names = {o["metadata"]["name"] for o in first.objects}
    second_names = {o["metadata"]["name"] for o in second.objects}
    assert not first_names & second_names
    service = next(
        o["metadata"]["name"] for o in first.all("Service") if o["metadata"]["name"].endswith("-worker-metrics")
    )
    assert len(service) == LABEL_LIMIT, service


def test_short_names_are_unchanged() -> None:
    rendered = chart.render(set_values=EVERYTHING)
    assert rendered.has("Service", "rel-catalog-worker-metrics")
    assert rendered.has("Job", "rel-catalog-migrations")
    # A release that starts with a digit, or holds dots, still gets readable names.
    digits = chart.render(set_values=EVERYTHING, release="2024.shop")
    assert digits.has("Service", "catalog-2024-shop-api")


@pytest.mark.parametrize(
    ("overrides", "expected_api"),
    [
        ({"fullnameOverride": "f" * 63}, None),
        ({"fullnameOverride": "shop"}, "shop-api"),
        ({"nameOverride": "n" * 63}, None),
    ],
)
def test_overrides_give_valid_names(overrides: dict[str, str], expected_api: str | None) -> None:
    rendered = chart.render(set_values={**EVERYTHING, **overrides}, release="r" * MAX_RELEASE)
    _check_names(rendered)
    if expected_api is not None:
        assert rendered.has("Deployment", expected_api)


@pytest.mark.parametrize(
    ("key", "value"), [("fullnameOverride", "Shop_API"), ("fullnameOverride", "1shop"), ("nameOverride", "a.b")]
)
def test_invalid_overrides_are_refused_by_name(key: str, value: str) -> None:
    result = chart.template(set_values={key: value})
    assert result.returncode != 0
    assert f"/{key}" in result.stderr, result.stderr


def test_helm_refuses_longer_release_names() -> None:
    # The bound the tests above rely on: 53 is the longest name helm installs.
    result = chart.template(release="r" * (MAX_RELEASE + 1))
    assert result.returncode != 0
    assert "53" in result.stderr


def test_every_template_builds_names_through_the_helpers() -> None:
    # A name assembled by hand ("{{ fullname }}-x") would escape the 63-character rule.
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted((CHART / "templates").glob("*.yaml"))
        for line in Path(path).read_text().splitlines()
        if re.search(r'include "catalog\.fullname" [^}]*\}\}-', line)
    ]
    assert not offenders, offenders
