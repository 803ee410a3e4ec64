"""Each guard in templates/guards.yaml, and the strict values schema, refuses a
bad value with a message that names it; the values just inside the limit pass."""

from __future__ import annotations

import pytest

from tests.fixtures.chart import ALL_CRDS, render, template

Values = dict[str, object]
# (values that break one invariant, the values the message must name, values just inside the limit)
GUARDS: dict[str, tuple[Values, list[str], Values]] = {
    "moving image tag": (
        {"image.tag": "latest"},
        ["image.tag", '"latest"'],
        {"image.tag": "1.2.3"},
    ),
    "api grace shorter than preStop + graceful timeout": (
        {"api.terminationGracePeriodSeconds": 39},
        [
            "api.terminationGracePeriodSeconds (39)",
            "api.preStopSleepSeconds (10)",
            "settings.gracefulTimeoutSeconds (30)",
        ],
        {"api.terminationGracePeriodSeconds": 40},
    ),
    "graceful timeout not above the drain": (
        {"settings.shutdownDrainSeconds": 29.5},
        ["settings.gracefulTimeoutSeconds (30)", "settings.shutdownDrainSeconds (29.5)"],
        {"settings.shutdownDrainSeconds": 29},
    ),
    "worker grace shorter than its shutdown grace": (
        {"worker.terminationGracePeriodSeconds": 64},
        ["worker.terminationGracePeriodSeconds (64)", "worker.shutdownGraceSeconds (60)"],
        {"worker.terminationGracePeriodSeconds": 65},
    ),
    "edge read timeout not above the request budget": (
        {"proxy.readTimeoutSeconds": 10},
        ["proxy.readTimeoutSeconds (10)", "settings.requestTimeoutSeconds (10)"],
        {"proxy.readTimeoutSeconds": 11},
    ),
    "request budget not above the statement timeout": (
        {"settings.dbStatementTimeoutSeconds": 10},
        ["settings.requestTimeoutSeconds (10)", "settings.dbStatementTimeoutSeconds (10)"],
        {"settings.dbStatementTimeoutSeconds": 9},
    ),
    "request budget not above the redis timeout": (
        {"settings.redisCommandTimeoutSeconds": 10},
        ["settings.requestTimeoutSeconds (10)", "settings.redisCommandTimeoutSeconds (10)"],
        {"settings.redisCommandTimeoutSeconds": 9},
    ),
    "app keep-alive not above the proxy's": (
        {"settings.keepaliveSeconds": 60},
        ["settings.keepaliveSeconds (60)", "proxy.upstreamKeepaliveTimeoutSeconds (60)"],
        {"settings.keepaliveSeconds": 61},
    ),
    # Defaults: api (6 max + 1 surge) x (10 + 1 for /readyz) + worker (4 max + 1 surge) x (1 slot + 4)
    # + 1 migration = 103.
    "connections above the database budget": (
        {"database.connectionBudget": 102},
        ["database.connectionBudget (102)", "settings.dbPoolMaxSize (10)", "= 103"],
        {"database.connectionBudget": 103},
    ),
    "connections with a bigger pool": (
        {"settings.dbPoolMaxSize": 20},
        ["database.connectionBudget (110)", "settings.dbPoolMaxSize (20)", "= 173"],
        {"settings.dbPoolMaxSize": 10},
    ),
    "connections when KEDA may add many workers": (
        {"worker.keda.enabled": True, "worker.keda.maxReplicas": 30},
        ["worker max replicas + surge (31)", "connections per worker pod (5: WORKER_CONCURRENCY + 4)"],
        {"worker.keda.enabled": True, "worker.keda.maxReplicas": 4},
    ),
    "a direct database URL without transaction pooling": (
        {"secrets.databaseDirectUrl": "postgresql://c@db-rw:5432/c"},
        ["secrets.databaseDirectUrl", "database.poolMode=transaction"],
        {"secrets.databaseDirectUrl": "postgresql://c@db-rw:5432/c", "database.poolMode": "transaction"},
    ),
    "the same URL as pooled and direct": (
        {
            "database.poolMode": "transaction",
            "secrets.databaseUrl": "postgresql://c@db:5432/c",
            "secrets.databaseDirectUrl": "postgresql://c@db:5432/c",
        },
        ["secrets.databaseDirectUrl equals secrets.databaseUrl"],
        {
            "database.poolMode": "transaction",
            "secrets.databaseUrl": "postgresql://c@db-pooler-rw:5432/c",
            "secrets.databaseDirectUrl": "postgresql://c@db-rw:5432/c",
        },
    ),
    "KEDA through a transaction-mode pooler without a direct URL": (
        {"worker.keda.enabled": True, "worker.keda.maxReplicas": 4, "database.poolMode": "transaction"},
        ["worker.keda.enabled", "database.poolMode=transaction", "secrets.databaseDirectUrl"],
        {
            "worker.keda.enabled": True,
            "worker.keda.maxReplicas": 4,
            "database.poolMode": "transaction",
            "secrets.databaseDirectUrl": "postgresql://c@db-rw:5432/c",
        },
    ),
    "a direct URL promised in a Secret that is not named": (
        {"database.directUrlInSecret": True},
        ["database.directUrlInSecret", "secrets.existingSecret"],
        {"database.directUrlInSecret": True, "secrets.existingSecret": "catalog-own"},
    ),
    "ingress and route together": (
        {"ingress.enabled": True, "httpRoute.enabled": True},
        ["ingress.enabled", "httpRoute.enabled"],
        {"ingress.enabled": True},
    ),
    "live update outside development": (
        {"development.liveUpdate": True},
        ["development.liveUpdate", "settings.environment=development", '"production"'],
        {"development.liveUpdate": True, "settings.environment": "development"},
    ),
}


@pytest.mark.parametrize("case", GUARDS, ids=list(GUARDS))
def test_guard_refuses_and_names_the_value(case: str) -> None:
    bad, named, good = GUARDS[case]
    result = template(set_values=bad)
    assert result.returncode != 0, f"{case}: rendered although it breaks the invariant"
    for fragment in named:
        assert fragment in result.stderr, f"{case}: {fragment!r} missing from: {result.stderr}"
    assert render(set_values=good).objects, case


def test_a_digest_makes_any_tag_acceptable() -> None:
    digest = "sha256:" + "a" * 64
    rendered = render(set_values={"image.tag": "latest", "image.digest": digest})
    [api] = [d for d in rendered.all("Deployment") if d["metadata"]["name"].endswith("-api")]
    assert api["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@" + digest)


def test_httproute_without_the_gateway_api_is_refused() -> None:
    without_gateway = [api for api in ALL_CRDS if not api.startswith("gateway.networking.k8s.io")]
    result = template(set_values={"httpRoute.enabled": True}, api_versions=without_gateway)
    assert result.returncode != 0
    assert "httpRoute.enabled" in result.stderr
    assert "gateway.networking.k8s.io/v1 HTTPRoute" in result.stderr


SCHEMA_CASES: dict[str, tuple[Values, str]] = {
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "misspelt nested key": ({"api.terminationGracePeriod": 60}, "terminationGracePeriod"),
    "wrong type": ({"api.preStopSleepSeconds": "soon"}, "preStopSleepSeconds"),
    "unknown ingress flavor": ({"ingress.flavor": "traefik"}, "flavor"),
    "bad environment variable name": ({"settings.extraEnv.log_level": "x"}, "extraEnv"),
    "short secret key": ({"secrets.secretKey": "short"}, "secretKey"),
    "database url scheme": ({"secrets.databaseUrl": "mysql://db/x"}, "databaseUrl"),
    "direct database url scheme": ({"secrets.databaseDirectUrl": "mysql://db/x"}, "databaseDirectUrl"),
    "pool mode": ({"database.poolMode": "statement"}, "poolMode"),
}


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=list(SCHEMA_CASES))
def test_schema_refuses_and_names_the_value(case: str) -> None:
    bad, named = SCHEMA_CASES[case]
    result = template(set_values=bad)
    assert result.returncode != 0, f"{case}: accepted"
    assert named in result.stderr, result.stderr
