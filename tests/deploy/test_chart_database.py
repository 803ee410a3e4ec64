"""The chart's database route: direct (session mode) by default, or a transaction-mode pooler and a direct URL."""

from __future__ import annotations

from tests.fixtures.chart import CI, defaults, name, render

POOLER = CI / "pooler-values.yaml"


def _egress_ports(rendered: object, component: str) -> set[int]:
    policy = rendered.get("NetworkPolicy", name(component))  # type: ignore[attr-defined]
    return {port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])}


def test_by_default_the_pods_use_session_mode_and_get_no_direct_url() -> None:
    rendered = defaults()
    assert rendered.get("ConfigMap", name("settings"))["data"]["DATABASE_POOL_MODE"] == "session"
    assert "DATABASE_DIRECT_URL" not in rendered.get("Secret", name("settings")).get("stringData", {})


def test_behind_cloudnativepgs_pooler_the_pods_get_both_urls_and_keda_the_direct_one() -> None:
    rendered = render([POOLER])
    assert rendered.get("ConfigMap", name("settings"))["data"]["DATABASE_POOL_MODE"] == "transaction"
    for secret in (name("settings"), name("migrations")):
        data = rendered.get("Secret", secret)["stringData"]
        assert "pooler-rw" in data["DATABASE_URL"]
        assert data["DATABASE_DIRECT_URL"] == "postgresql://catalog:secret@catalog-db-rw:5432/catalog"
    auth = rendered.get("TriggerAuthentication", name("worker"))
    assert auth["spec"]["secretTargetRef"][0]["key"] == "DATABASE_DIRECT_URL"


def test_the_network_policy_opens_the_pooler_port_and_postgresqls_own() -> None:
    managed = {"database.port": 6432, "database.directPort": 5432}
    rendered = render([POOLER], set_values=managed)
    for component in ("api", "worker"):
        assert {6432, 5432} <= _egress_ports(rendered, component)
    session = render(set_values={"database.port": 6432})
    assert 5432 not in _egress_ports(session, "api")
