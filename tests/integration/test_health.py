"""Probes: liveness without I/O, readiness against the real backends, startup after the lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import ROUTES, Backends, TableLock, dedicated_backends

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES


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


@pytest.fixture
def dedicated() -> Iterator[Backends]:
    with dedicated_backends() as backends:
        yield backends


async def test_readiness_holds_while_the_request_pool_is_saturated_and_fails_when_postgres_is_down(
    dedicated: Backends,
) -> None:
    """The issue: with the request pool busy, /readyz answered 503 (postgres: TimeoutError) on every pod."""
    settings = make_settings(
        dedicated,
        db_pool_min_size=2,
        db_pool_max_size=2,
        db_pool_acquire_timeout_seconds=5,
        readiness_timeout_seconds=0.5,
        breaker_reset_seconds=0.5,
    )
    admin = await asyncpg.connect(dedicated.database_url)
    await admin.execute(
        "INSERT INTO items (sku, name, category, price_cents, stock) "
        "VALUES ('a', 'a', 'c', 1, 1), ('b', 'b', 'c', 1, 1)"
    )
    async with lifespan_client(create_app(settings)) as client:
        lock = await TableLock(admin).hold()
        # Both pool connections blocked on the lock, and more requests queued for them.
        busy = [
            asyncio.create_task(client.get(f"/v1/items/{n % 2 + 1}", headers={"X-Request-ID": f"b{n}"}))
            for n in range(6)
        ]
        await asyncio.sleep(0.3)
        for _ in range(5):
            started = time.monotonic()
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["postgres"] == "ok"
            assert time.monotonic() - started < 0.5
        assert (await client.head("/readyz")).status_code == 200
        await lock.release()
        await asyncio.gather(*busy)
        await admin.close()

        assert dedicated.postgres is not None
        dedicated.postgres.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["postgres"].startswith("error")
        dedicated.postgres.start()
        for _ in range(50):  # the probe's connection comes back by itself
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("/readyz did not recover")
