"""Real PostgreSQL and Redis servers stopped and restarted under a running app.

Redis is soft: without it reads come from PostgreSQL, writes succeed and the
pod stays ready (reporting `degraded`). PostgreSQL is hard: requests fail fast
with 503 and the pod is not ready. Either way the app recovers by itself once
the server is back; nothing is restarted but the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, dedicated_backends
from tests.fixtures.items import new_item
from tests.fixtures.keys import WRITER


@pytest.fixture
def dedicated() -> Iterator[Backends]:
    with dedicated_backends() as backends:
        yield backends


async def eventually(check: Callable[[], Awaitable[bool]], within_seconds: float = 10) -> float:
    """Seconds until `check()` holds (fails the test if it never does)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within_seconds:
            pytest.fail(f"did not recover within {within_seconds} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_redis_down_then_back(dedicated: Backends) -> None:
    settings = make_settings(dedicated, breaker_reset_seconds=0.5, cache_l1_ttl_seconds=60)
    async with lifespan_client(create_app(settings)) as client:
        client.headers.update(WRITER)
        cached = (await client.post("/v1/items", json=new_item(1))).json()["id"]
        uncached = (await client.post("/v1/items", json=new_item(2))).json()["id"]
        assert (await client.get(f"/v1/items/{cached}")).status_code == 200

        assert dedicated.redis is not None
        dedicated.redis.stop()

        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
        response, elapsed = await timed(client.get(f"/v1/items/{uncached}"))
        assert response.status_code == 200  # from PostgreSQL, cache bypassed
        assert elapsed < 1.5
        assert (await client.post("/v1/items", json=new_item(3))).status_code == 201
        assert (await client.patch(f"/v1/items/{cached}", json={"stock": 77})).status_code == 200
        assert (await client.get(f"/v1/items/{cached}")).json()["stock"] == 77  # not the stale L1 copy
        for _ in range(20):  # with the breaker open each read is as fast as without a cache
            _, elapsed = await timed(client.get(f"/v1/items/{uncached}"))
            assert elapsed < 0.5

        dedicated.redis.start()
        probe = redis.Redis.from_url(dedicated.redis_url)
        try:

            async def cache_fills_again() -> bool:
                await client.get(f"/v1/items/{uncached}")
                return bool(await probe.keys("*:c:*"))

            await eventually(cache_fills_again)
        finally:
            await probe.aclose()
        assert (await client.get("/readyz")).json()["status"] == "ok"


async def test_postgres_down_then_back(dedicated: Backends) -> None:
    settings = make_settings(
        dedicated, breaker_reset_seconds=0.5, db_pool_acquire_timeout_seconds=0.5, readiness_timeout_seconds=0.5
    )
    async with lifespan_client(create_app(settings)) as client:
        client.headers.update(WRITER)
        cached = (await client.post("/v1/items", json=new_item(1))).json()["id"]
        uncached = (await client.post("/v1/items", json=new_item(2))).json()["id"]
        assert (await client.get(f"/v1/items/{cached}")).status_code == 200

        assert dedicated.postgres is not None
        dedicated.postgres.stop()

        for request in [
            client.get(f"/v1/items/{uncached}"),
            client.get("/v1/items"),
            client.post("/v1/items", json=new_item(3)),
            client.get("/v1/items/export.csv"),
            client.get(f"/v1/items/{uncached}"),  # by now the breaker is open: no connection attempt
        ]:
            response, elapsed = await timed(request)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
            assert elapsed < 1.0
        ready, elapsed = await timed(client.get("/readyz"))
        assert ready.status_code == 503
        assert elapsed < 1.0
        # A cached item is still served: the cache answers without PostgreSQL.
        assert (await client.get(f"/v1/items/{cached}")).status_code == 200

        dedicated.postgres.start()

        async def serving() -> bool:
            return (await client.get("/v1/items")).status_code == 200

        await eventually(serving)
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/v1/items", json=new_item(4))).status_code == 201


async def test_a_connection_broken_mid_statement_is_a_503_not_a_500(backends: Backends) -> None:
    """asyncpg's InternalClientError (seen when PostgreSQL stopped under load) answers like an outage."""
    app = create_app(make_settings(backends))

    async def broken() -> None:
        raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    app.add_api_route("/v1/broken-connection", broken)
    async with lifespan_client(app) as client:
        response = await client.get("/v1/broken-connection")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" in response.headers
