"""Probes: liveness without I/O, readiness against the real backends, startup after the lifespan."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends


async def test_probes_answer_when_healthy(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/startupz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
    assert ready.headers["cache-control"] == "no-store"


async def test_probes_are_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/readyz" not in paths
    assert "/v1/items/{item_id}" in paths


async def test_without_redis_the_pod_stays_ready_and_says_it_is_degraded(backends: Backends) -> None:
    settings = make_settings(backends, redis_url="redis://127.0.0.1:1/0", readiness_timeout_seconds=0.5)
    async with lifespan_client(create_app(settings)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error")


async def test_readiness_is_503_while_draining_but_liveness_holds(settings: Settings) -> None:
    app = create_app(settings)
    async with lifespan_client(app) as client:
        app.lifecycle.draining = True
        assert (await client.get("/readyz")).json() == {"status": "draining"}
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/livez")).status_code == 200


async def test_startup_probe_fails_before_the_lifespan_ran(settings: Settings) -> None:
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/startupz")).status_code == 503


@pytest.mark.parametrize(("environment", "docs"), [("development", 200), ("production", 404)])
async def test_openapi_docs_are_on_only_in_development(backends: Backends, environment: str, docs: int) -> None:
    settings = make_settings(backends, environment=environment)
    async with lifespan_client(create_app(settings)) as client:
        assert (await client.get("/docs")).status_code == docs
        assert (await client.get("/openapi.json")).status_code == docs
