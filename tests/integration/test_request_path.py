"""The request path's guards: time budget, bulkhead, security headers, CORS, trusted proxies."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import redis.asyncio as redis

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings, one_connection_settings
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.items import seed


async def test_a_request_over_its_budget_is_cut_off_with_503(backends: Backends, db: asyncpg.Connection) -> None:
    await seed(db, 2)
    settings = one_connection_settings(backends, cache_enabled=False)
    async with lifespan_client(create_app(settings)) as client, TableLock(db) as lock:
        holder = asyncio.create_task(client.get("/v1/items/1"))  # holds the only connection
        await lock.wait_for_waiter()
        started = time.monotonic()
        response = await client.get("/v1/items/2")  # waits for a connection
        elapsed = time.monotonic() - started
        await lock.release()
        await holder
    assert response.status_code == 503
    assert "1.2 s" in response.json()["detail"]
    assert 1.0 < elapsed < 1.6


async def test_exports_beyond_the_bulkhead_are_refused_at_once(backends: Backends, db: asyncpg.Connection) -> None:
    await seed(db, 10)
    settings = make_settings(backends, export_max_concurrent=1)
    async with lifespan_client(create_app(settings)) as client, TableLock(db) as lock:
        running = asyncio.create_task(client.get("/v1/items/export.csv"))  # inside the bulkhead, waiting
        await lock.wait_for_waiter()
        started = time.monotonic()
        refused = await client.get("/v1/items/export.csv")
        elapsed = time.monotonic() - started
        await lock.release()
        assert (await running).status_code == 200
        assert (await client.get("/v1/items/export.csv")).status_code == 200  # the slot was given back
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert elapsed < 0.2


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for response in [await client.get("/v1/items"), await client.get("/v1/items/999"), await client.get("/livez")]:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers  # off unless configured


async def test_hsts_and_cors_when_configured(backends: Backends, db: asyncpg.Connection) -> None:
    settings = make_settings(backends, hsts_max_age_seconds=31536000, cors_allow_origins="https://shop.example")
    async with lifespan_client(create_app(settings)) as client:
        plain = await client.get("/v1/items", headers={"Origin": "https://shop.example"})
        assert plain.headers["strict-transport-security"] == "max-age=31536000"
        assert plain.headers["access-control-allow-origin"] == "https://shop.example"
        assert "x-ratelimit-remaining" in plain.headers["access-control-expose-headers"].lower()
        preflight = await client.options(
            "/v1/items",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        other = await client.get("/v1/items", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_forwarded_for_counts_only_from_a_trusted_proxy(backends: Backends, db: asyncpg.Connection) -> None:
    """The test client connects from 127.0.0.1: trusted by default, untrusted when TRUSTED_PROXIES excludes it."""
    for trusted, expected in [("127.0.0.1", [200, 200, 200, 200]), ("10.0.0.0/8", [200, 200, 429, 429])]:
        settings = make_settings(backends, rate_limit_reads="2/hour", trusted_proxies=trusted)
        async with lifespan_client(create_app(settings)) as client:
            statuses = []
            for address in ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2"]:
                statuses.append((await client.get("/v1/items", headers={"X-Forwarded-For": address})).status_code)
        assert statuses == expected, trusted
        counters = redis.Redis.from_url(backends.redis_url)
        await counters.flushdb()  # the next round starts with fresh counters
        await counters.aclose()
