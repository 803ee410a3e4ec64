"""Saturation metrics: event-loop lag and the PostgreSQL pool, read from the real registry."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
from prometheus_client import REGISTRY

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, TableLock


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_a_blocked_event_loop_shows_as_lag(client: httpx.AsyncClient) -> None:
    slow_before = sample("event_loop_lag_seconds_count") - sample("event_loop_lag_seconds_bucket", {"le": "0.25"})
    time.sleep(0.6)  # noqa: ASYNC251 - blocking the loop on purpose: this is what the metric must catch
    await asyncio.sleep(0.4)
    slow_after = sample("event_loop_lag_seconds_count") - sample("event_loop_lag_seconds_bucket", {"le": "0.25"})
    assert slow_after - slow_before >= 1


async def test_pool_gauges_and_acquire_wait(backends: Backends, db: asyncpg.Connection) -> None:
    settings = make_settings(backends, db_pool_min_size=2, db_pool_max_size=4, cache_enabled=False)
    async with lifespan_client(create_app(settings)) as client:
        acquired_before = sample("db_pool_acquire_seconds_count")
        for _ in range(5):
            await client.get("/v1/items/1")
        assert sample("db_pool_acquire_seconds_count") - acquired_before == 5
        assert sample("db_pool_connections", {"state": "max"}) == 4
        assert sample("db_pool_connections", {"state": "in_use"}) == 0
        assert sample("db_pool_connections", {"state": "open"}) >= 2
        assert sample("db_pool_connections", {"state": "idle"}) == sample("db_pool_connections", {"state": "open"})
        async with TableLock(db) as lock:
            waiting = asyncio.create_task(client.get("/v1/items/1"))  # holds a connection while it waits
            await asyncio.sleep(0.2)
            assert sample("db_pool_connections", {"state": "in_use"}) == 1
            await lock.release()
            await waiting
        assert sample("db_pool_connections", {"state": "in_use"}) == 0


async def test_postgres_and_redis_call_latency_is_recorded_per_operation(
    backends: Backends, db: asyncpg.Connection
) -> None:
    def calls(dependency: str, operation: str) -> float:
        return sample("dependency_call_duration_seconds_count", {"dependency": dependency, "operation": operation})

    async with lifespan_client(create_app(make_settings(backends))) as client:
        await asyncio.sleep(0.1)  # the pool's first connections were opened (and instrumented)
        selects, inserts = calls("postgres", "select"), calls("postgres", "insert")
        cache_gets, limits = calls("redis", "cache_get"), calls("redis", "rate_limit")
        await client.get("/v1/items/1")  # cache miss: a Redis read, then PostgreSQL
        await client.get("/v1/items/2")
        await db.execute("SELECT 1")  # not through the app's pool: not counted
        await asyncio.sleep(0.05)  # asyncpg reports each statement on the next loop turn
        assert calls("postgres", "select") - selects == 2
        assert calls("postgres", "insert") - inserts == 0
        assert calls("redis", "cache_get") - cache_gets == 2
        assert calls("redis", "rate_limit") - limits >= 1
    slow = sample("dependency_call_duration_seconds_count", {"dependency": "postgres", "operation": "select"}) - sample(
        "dependency_call_duration_seconds_bucket", {"dependency": "postgres", "operation": "select", "le": "5.0"}
    )
    assert slow == 0  # loopback statements take well under 5 s: the observations are seconds, not ms
