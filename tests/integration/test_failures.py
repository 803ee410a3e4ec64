"""When things break: an unhandled exception, a saturated pool, a statement timeout."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from service.app import create_app
from service.state import DatabaseDep
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.items import seed


async def test_an_unhandled_exception_is_a_bare_500_problem_with_the_request_id(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(backends))

    async def explode() -> None:
        raise RuntimeError("secret internals: SELECT * FROM users")

    app.add_api_route("/explode", explode)
    async with lifespan_client(app) as client:
        with caplog.at_level(logging.ERROR, logger="service.middleware"):
            response = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "boom-1"
    assert response.json() == {"type": "about:blank", "title": "Internal Server Error", "status": 500}
    [record] = [r for r in caplog.records if r.getMessage() == "unhandled exception"]
    assert record.exc_info is not None
    assert "secret internals" in str(record.exc_info[1])  # in the log, never in the response


async def test_a_saturated_pool_answers_503_quickly(backends: Backends, db: asyncpg.Connection) -> None:
    await seed(db, 3)
    settings = make_settings(backends, db_pool_max_size=1, db_pool_min_size=1, db_pool_acquire_timeout_seconds=0.3)
    async with lifespan_client(create_app(settings)) as client, TableLock(db) as lock:
        holder = asyncio.create_task(client.get("/v1/items/1"))  # takes the only connection and waits
        await lock.wait_for_waiter()
        started = asyncio.get_running_loop().time()
        response = await client.get("/v1/items/2")
        elapsed = asyncio.get_running_loop().time() - started
        await lock.release()
        assert (await holder).status_code == 200
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert elapsed < 1.0


async def test_a_statement_over_its_timeout_is_cancelled_and_answered_503(
    backends: Backends, db: asyncpg.Connection
) -> None:
    await seed(db, 1)
    settings = make_settings(backends, db_statement_timeout_seconds=0.3)
    async with lifespan_client(create_app(settings)) as client:
        async with TableLock(db):
            response = await client.get("/v1/items/1")
        assert response.status_code == 503
        assert "retry" in response.json()["detail"].lower()
        # The pool recovers: the next request is served normally.
        assert (await client.get("/v1/items/1")).status_code == 200


async def test_an_export_over_a_saturated_pool_is_503_not_an_empty_200(
    backends: Backends, db: asyncpg.Connection
) -> None:
    await seed(db, 3)
    settings = make_settings(backends, db_pool_max_size=1, db_pool_min_size=1, db_pool_acquire_timeout_seconds=0.3)
    async with lifespan_client(create_app(settings)) as client, TableLock(db) as lock:
        holder = asyncio.create_task(client.get("/v1/items/1"))
        await lock.wait_for_waiter()
        response = await client.get("/v1/items/export.csv")
        await lock.release()
        await holder
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


def _gone(conn: object) -> bool:
    try:
        return bool(conn.is_closed())  # type: ignore[attr-defined]
    except asyncpg.InterfaceError:  # detached from the pool's proxy: closed
        return True


async def test_a_connection_lost_inside_a_transaction_is_503_not_500(
    backends: Backends, db: asyncpg.Connection
) -> None:
    """The server goes away under a transaction block (a failover, a restart, pg_terminate_backend).

    asyncpg raises InterfaceError ("the underlying connection is closed") from the block's exit
    in place of the loss itself; that was answered 500 (a POST /v1/jobs in the failover drill).
    A misuse of an open connection is still a bug, answered 500.
    """
    app = create_app(make_settings(backends))

    async def lost(database: DatabaseDep) -> None:
        async with database.connection() as conn, conn.transaction():
            await db.execute("SELECT pg_terminate_backend($1)", await conn.fetchval("SELECT pg_backend_pid()"))
            for _ in range(500):  # until asyncpg has seen the socket close (and detached it from the proxy)
                if _gone(conn):
                    break
                await asyncio.sleep(0.01)
            assert _gone(conn)
            await conn.fetchval("SELECT 1")

    async def misused(database: DatabaseDep) -> None:
        # A nested block of another isolation: asyncpg refuses it (InterfaceError) on an open connection.
        async with database.connection() as conn, conn.transaction(), conn.transaction(isolation="serializable"):
            pass

    app.add_api_route("/lost", lost)
    app.add_api_route("/misused", misused)
    async with lifespan_client(app) as client:
        response = await client.get("/lost")
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "/problems/unavailable"
        assert (await client.get("/misused")).status_code == 500
        assert (await client.get("/v1/items/1")).status_code == 404  # the pool recovered: a new connection
