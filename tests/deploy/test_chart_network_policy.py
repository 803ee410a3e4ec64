"""The NetworkPolicies: only the ingress controller (and `helm test`'s pod) reaches HTTP; egress is
DNS, PostgreSQL, Redis and what extraEgress adds."""

from __future__ import annotations

from tests.fixtures.chart import CI, Manifest, name, render

SELECTOR_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")


def _ports(rule: Manifest) -> set[object]:
    return {port["port"] for port in rule.get("ports", [])}


def test_network_policy_only_the_ingress_controller_reaches_http() -> None:
    rendered = render([CI / "production-values.yaml"])
    policy = rendered.get("NetworkPolicy", name("api"))
    api = rendered.get("Deployment", name("api"))
    assert policy["spec"]["podSelector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    by_port = {frozenset(_ports(rule)): rule["from"] for rule in policy["spec"]["ingress"]}
    test_pod = rendered.get("Pod", name("helm-test"))
    assert by_port[frozenset({"http"})] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"podSelector": {"matchLabels": {key: test_pod["metadata"]["labels"][key] for key in SELECTOR_KEYS}}},
    ]
    assert frozenset({"metrics"}) in by_port
    assert len(by_port) == 2


def test_without_helm_tests_only_the_ingress_controller_reaches_http() -> None:
    rendered = render([CI / "production-values.yaml"], {"tests.enabled": False})
    assert rendered.all("Pod") == [], "no test pod"
    policy = rendered.get("NetworkPolicy", name("api"))
    by_port = {frozenset(_ports(rule)): rule["from"] for rule in policy["spec"]["ingress"]}
    assert by_port[frozenset({"http"})] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_network_policy_egress_is_dns_postgres_and_redis_only() -> None:
    rendered = render([CI / "production-values.yaml"])
    api_egress = rendered.get("NetworkPolicy", name("api"))["spec"]["egress"]
    assert [_ports(rule) for rule in api_egress] == [{53}, {5432}, {6379}]
    assert api_egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    assert api_egress[2]["to"] == [{"ipBlock": {"cidr": "10.20.1.0/24"}}]
    worker_policy = rendered.get("NetworkPolicy", name("worker"))
    assert [_ports(rule) for rule in worker_policy["spec"]["egress"]] == [{53}, {5432}], "the worker needs no Redis"
    assert [_ports(rule) for rule in worker_policy["spec"]["ingress"]] == [{"metrics"}]


def test_extra_egress_reaches_a_collector_from_the_api_and_the_worker() -> None:
    collector = {"to": [{"podSelector": {"matchLabels": {"app": "otel-collector"}}}], "ports": [{"port": 4318}]}
    rendered = render(
        set_values={
            "networkPolicy.extraEgress[0].to[0].podSelector.matchLabels.app": "otel-collector",
            "networkPolicy.extraEgress[0].ports[0].port": 4318,
        }
    )
    for component in ("api", "worker"):
        egress = rendered.get("NetworkPolicy", name(component))["spec"]["egress"]
        assert egress[-1] == collector, component
