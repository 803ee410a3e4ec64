"""One request's cancellation never fails another, and every response is a problem with the request id.

The issue's example: with REQUEST_TIMEOUT_SECONDS set and a slow cache fill
shared by 4 requests, the leader got its 503 but the 3 waiters inherited its
cancellation: 500 text/plain, no X-Request-ID, no security headers, and an
access-log line with "status": 0.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from starlette.types import Receive, Scope, Send

from service.app import create_app
from service.cache import LocalTTLCache, TwoLevelCache
from service.resilience import CircuitBreaker
from tests.fixtures.app import lifespan_client, make_settings, one_connection_settings
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.items import seed


async def test_waiters_of_a_cancelled_cache_fill_get_their_own_answer(
    backends: Backends, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(db, 2)
    settings = one_connection_settings(backends)
    async with lifespan_client(create_app(settings)) as client, TableLock(db) as lock:
        holder = asyncio.create_task(client.get("/v1/items/1"))  # holds the only connection
        await asyncio.sleep(0.1)
        with caplog.at_level(logging.INFO, logger="service.access"):
            requests = []
            for n in range(4):  # the leader, then 3 that join its fill while it waits
                requests.append(asyncio.create_task(client.get("/v1/items/2", headers={"X-Request-ID": f"shared-{n}"})))
                await asyncio.sleep(0.2)
            responses = await asyncio.gather(*requests)
        await lock.release()
        await holder
    for n, response in enumerate(responses):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["x-request-id"] == f"shared-{n}"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "retry-after" in response.headers
    statuses = {
        record.__dict__.get("status") for record in caplog.records if record.__dict__.get("path") == "/v1/items/2"
    }
    assert statuses == {503}


@pytest.mark.parametrize("error", [RuntimeError("limiter bug"), asyncio.CancelledError()])
async def test_a_failure_inside_a_middleware_layer_is_a_problem_with_the_request_id(
    backends: Backends, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    """The rate limiter (a layer outside the routes) raises; a stray CancelledError is an error too."""
    app = create_app(make_settings(backends))
    async with app.router.lifespan_context(app) as state:
        assert state is not None

        async def broken(*_: object, **__: object) -> None:
            raise error

        state["limiter"].admit_locally = lambda *_, **__: None  # go to the (broken) shared count
        state["limiter"].hit = broken

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state)
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            with caplog.at_level(logging.INFO, logger="service.access"):
                response = await client.get("/v1/items", headers={"X-Request-ID": "layer-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "layer-1"
    assert response.headers["x-frame-options"] == "DENY"
    [access] = [record for record in caplog.records if record.name == "service.access"]
    assert access.__dict__["status"] == 500


async def test_a_waiter_loads_again_when_the_leader_is_cancelled(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    cache = TwoLevelCache(
        client, CircuitBreaker("redis", 3, 1.0), namespace="cancel", l1=LocalTTLCache(10, 60), l2_ttl_seconds=60
    )
    gate = asyncio.Event()
    calls = 0

    async def slow_load() -> bytes | None:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"value"

    try:
        leader = asyncio.create_task(cache.get("k", slow_load))
        waiters = [asyncio.create_task(cache.get("k", slow_load)) for _ in range(3)]
        await asyncio.sleep(0.05)
        leader.cancel()  # its request timed out
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*waiters) == [b"value"] * 3
        assert leader.cancelled()
        assert calls == 2  # the leader's load, then one more shared by the waiters
    finally:
        await client.aclose()
