"""oidc.* values: the API's token settings, its NetworkPolicy egress to the issuer, and the refusals."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from service.config import Settings
from tests.fixtures.chart import CI, Manifest, name, render, template

KEYCLOAK = {
    "oidc.issuerUrl": "https://login.example.com/realms/catalog",
    "oidc.audience": "catalog-api",
    "oidc.scopeClaims": "realm_access.roles",
    "oidc.scopeMap": json.dumps({"catalog-editor": ["items:read", "items:write", "jobs:read", "jobs:write"]}),
}


def _issuer_rules(policy: Manifest) -> list[Manifest]:
    known = {53, 5432, 6379}
    return [rule for rule in policy["spec"]["egress"] if not {p["port"] for p in rule.get("ports", [])} & known]


def test_no_issuer_no_token_settings_and_no_egress_to_one() -> None:
    rendered = render([CI / "production-values.yaml"])
    settings = rendered.get("ConfigMap", name("settings"))["data"]
    assert not [key for key in settings if key.startswith("OIDC_")]
    assert _issuer_rules(rendered.get("NetworkPolicy", name("api"))) == []


def test_an_issuer_sets_the_api_settings_and_they_load() -> None:
    rendered = render([CI / "production-values.yaml"], KEYCLOAK)
    data = rendered.get("ConfigMap", name("settings"))["data"]
    assert data["OIDC_ISSUER_URL"] == KEYCLOAK["oidc.issuerUrl"]
    assert data["OIDC_AUDIENCE"] == "catalog-api"
    assert data["OIDC_ALGORITHMS"] == "RS256"
    # What the chart renders is what the service accepts (environment variables are case-insensitive).
    values: dict[str, object] = {key.lower(): value for key, value in data.items() if key.startswith("OIDC_")}
    values["oidc_scope_map"] = json.loads(data["OIDC_SCOPE_MAP"])  # as pydantic-settings decodes it from the env
    base = {"environment": "development", "database_url": "postgresql://a@db/x", "redis_url": "redis://r:6379/0"}
    settings = Settings(**base, **values)  # type: ignore[arg-type]
    assert settings.oidc_scope_map["catalog-editor"] == frozenset(
        {"items:read", "items:write", "jobs:read", "jobs:write"}
    )


def test_the_api_may_reach_the_issuer_and_the_worker_may_not() -> None:
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    rendered = render([CI / "production-values.yaml"], {**KEYCLOAK, "oidc.issuerPeers": peers})
    [rule] = _issuer_rules(rendered.get("NetworkPolicy", name("api")))
    assert rule == {"ports": [{"port": 443, "protocol": "TCP"}], "to": peers}
    assert _issuer_rules(rendered.get("NetworkPolicy", name("worker"))) == []


def test_the_issuer_port_comes_from_the_url_and_no_peers_means_any_address() -> None:
    rendered = render(
        [CI / "production-values.yaml"], {**KEYCLOAK, "oidc.issuerUrl": "https://keycloak.identity.svc:8443/realms/x"}
    )
    [rule] = _issuer_rules(rendered.get("NetworkPolicy", name("api")))
    assert rule == {"ports": [{"port": 8443, "protocol": "TCP"}]}


def test_changing_the_issuer_rolls_the_pods() -> None:
    def checksum(values: Mapping[str, object]) -> str:
        api = render([CI / "production-values.yaml"], values).get("Deployment", name("api"))
        return str(api["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(KEYCLOAK) != checksum({**KEYCLOAK, "oidc.audience": "another-api"})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"oidc.issuerUrl": "https://login.example.com/realms/catalog"}, "oidc.audience must be set"),
        ({**KEYCLOAK, "oidc.issuerUrl": "http://login.example.com/realms/catalog"}, "issuerUrl"),
        ({**KEYCLOAK, "oidc.algorithms": "HS256"}, "algorithms"),
        ({**KEYCLOAK, "oidc.algorithms": "RS256,none"}, "algorithms"),
    ],
    ids=["issuer without audience", "plain http issuer", "HS256", "none beside RS256"],
)
def test_unsafe_token_values_refuse_to_render(values: dict[str, object], named: str) -> None:
    result = template([CI / "production-values.yaml"], values)
    assert result.returncode != 0, "rendered"
    assert named in result.stderr, result.stderr
