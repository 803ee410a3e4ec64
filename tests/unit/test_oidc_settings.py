"""OIDC_* settings: unsafe token settings refuse to start, naming the variable; scope claims map as documented."""

from __future__ import annotations

import os

import pytest

from service.config import ConfigurationError, load_settings
from service.oidc import ScopeMapper, looks_like_jwt

BASE = {
    "DATABASE_URL": "postgresql://app@db.internal:5432/catalog",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "ENVIRONMENT": "development",
    "OIDC_ISSUER_URL": "https://login.example.com/realms/catalog",
    "OIDC_AUDIENCE": "catalog-api",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def refusal(env: pytest.MonkeyPatch, **values: str) -> str:
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    return str(caught.value.code)


def test_a_good_oidc_environment_loads(env: pytest.MonkeyPatch) -> None:
    env.setenv("OIDC_SCOPE_CLAIMS", "scp, roles")
    env.setenv("OIDC_SCOPE_MAP", '{"Catalog.Write": ["items:write", "jobs:write"]}')
    env.setenv("OIDC_ALGORITHMS", "RS256,ES256")
    settings = load_settings()
    assert settings.oidc_scope_claims == ["scp", "roles"]
    assert settings.oidc_scope_map == {"Catalog.Write": frozenset({"items:write", "jobs:write"})}
    assert settings.oidc_algorithms == ["RS256", "ES256"]


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,HS512", "none", "RS256,none", ""])
def test_symmetric_and_none_algorithms_refuse_to_start(env: pytest.MonkeyPatch, algorithms: str) -> None:
    message = refusal(env, OIDC_ALGORITHMS=algorithms)
    assert message.startswith("configuration error: OIDC_ALGORITHMS is invalid")


def test_an_issuer_without_an_audience_refuses_to_start(env: pytest.MonkeyPatch) -> None:
    env.delenv("OIDC_AUDIENCE")
    assert "OIDC_AUDIENCE must be set" in refusal(env)


@pytest.mark.parametrize(
    "url",
    ["http://login.example.com/realms/catalog", "ftp://login.example.com", "https://login.example.com/?x=1", "login"],
)
def test_an_issuer_url_that_cannot_be_trusted_refuses_to_start(env: pytest.MonkeyPatch, url: str) -> None:
    assert refusal(env, OIDC_ISSUER_URL=url).startswith("configuration error: OIDC_ISSUER_URL is invalid")


def test_plain_http_is_accepted_on_loopback_only(env: pytest.MonkeyPatch) -> None:
    env.setenv("OIDC_ISSUER_URL", "http://127.0.0.1:5556/dex")
    assert load_settings().oidc_issuer_url == "http://127.0.0.1:5556/dex"


def test_a_scope_map_onto_unknown_scopes_refuses_to_start(env: pytest.MonkeyPatch) -> None:
    message = refusal(env, OIDC_SCOPE_MAP='{"admins": ["everything"]}')
    assert message.startswith("configuration error: OIDC_SCOPE_MAP is invalid")
    assert "everything" in message


def test_a_refetch_floor_above_the_refresh_interval_refuses_to_start(env: pytest.MonkeyPatch) -> None:
    assert "OIDC_JWKS_MIN_REFETCH_SECONDS" in refusal(
        env, OIDC_JWKS_MIN_REFETCH_SECONDS="600", OIDC_JWKS_REFRESH_SECONDS="300"
    )


def test_no_issuer_means_no_tokens(env: pytest.MonkeyPatch) -> None:
    env.delenv("OIDC_ISSUER_URL")
    env.delenv("OIDC_AUDIENCE")
    assert load_settings().oidc_issuer_url is None


@pytest.mark.parametrize(
    ("claims", "mapping", "payload", "scopes"),
    [
        (["scope"], {}, {"scope": "openid items:read jobs:write"}, {"items:read", "jobs:write"}),
        (["scp", "roles"], {"Catalog.Read": ["items:read"], "Jobs.Run": ["jobs:write"]},
         {"scp": "Catalog.Read", "roles": ["Jobs.Run", "Other"]}, {"items:read", "jobs:write"}),
        (["realm_access.roles"], {"catalog-editor": ["items:write"]},
         {"realm_access": {"roles": ["catalog-editor", "offline_access"]}}, {"items:write"}),
        (["scope"], {"catalog": ["items:read"]}, {"scope": "items:write"}, set()),  # a map replaces the identity
        (["groups"], {}, {"groups": "not-a-list-of-our-scopes"}, set()),
        (["missing.path"], {}, {"missing": "a string, not an object"}, set()),
    ],
)  # fmt: skip
def test_scope_claims_map_onto_our_scopes(
    claims: list[str], mapping: dict[str, list[str]], payload: dict[str, object], scopes: set[str]
) -> None:
    mapper = ScopeMapper(claims, {name: frozenset(values) for name, values in mapping.items()})
    assert mapper.scopes(payload) == scopes


@pytest.mark.parametrize(
    ("credential", "is_token"),
    [("cat_abc-DEF_123", False), ("eyJ.eyJ.sig", True), ("a.b", False), ("a.b.c.d", False), ("", False)],
)
def test_a_token_is_told_from_a_key_by_its_shape(credential: str, is_token: bool) -> None:
    assert looks_like_jwt(credential) is is_token
