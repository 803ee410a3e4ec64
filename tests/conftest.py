"""Test harness: real PostgreSQL and Redis for the whole session.

DATABASE_URL / REDIS_URL, when set, point the suite at existing servers (it
empties the `items` table and flushes the Redis database it is given).
Otherwise the session starts throwaway servers from the system binaries under
a temporary directory and removes them at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.app import create_app
from service.config import Settings
from service.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))
import servers  # noqa: E402  (stdlib-only helpers shared with `make up`)

TEST_SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"
# API keys the tests present; only their hashes go into the settings, as in production.
WRITER_KEY = "cat_test-writer-key"
READER_KEY = "cat_test-reader-key"
TEST_API_KEYS = [
    {
        "name": "test-writer",
        "sha256": hashlib.sha256(WRITER_KEY.encode()).hexdigest(),
        "scopes": ["items:write", "jobs:write"],
    },
    {"name": "test-reader", "sha256": hashlib.sha256(READER_KEY.encode()).hexdigest(), "scopes": ["items:read"]},
]
WRITER = {"Authorization": f"Bearer {WRITER_KEY}"}


@dataclass
class Backends:
    database_url: str
    redis_url: str
    postgres: servers.Postgres | None  # None when the URL came from the environment
    redis: servers.Redis | None


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    workdir = servers.server_workdir("catalog-tests-")  # the postgres user must reach its directory inside
    postgres = redis_server = None
    try:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = servers.Postgres(workdir / "postgres", servers.free_port())
            postgres.start()
            postgres.create_database("catalog_test")
            database_url = postgres.url("catalog_test")
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = servers.Redis(workdir / "redis", servers.free_port())
            redis_server.start()
            redis_url = redis_server.url()
        asyncio.run(migrate(database_url))
        yield Backends(database_url, redis_url, postgres, redis_server)
    finally:
        if redis_server is not None:
            redis_server.stop()
        if postgres is not None:
            postgres.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def dedicated_backends(*postgres_settings: str) -> Iterator[Backends]:
    """A PostgreSQL and a Redis for one test alone: it may stop and restart them."""
    workdir = servers.server_workdir("catalog-dedicated-")
    postgres = servers.Postgres(workdir / "postgres", servers.free_port(), settings=postgres_settings)
    redis_server = servers.Redis(workdir / "redis", servers.free_port())
    try:
        postgres.start()
        redis_server.start()
        asyncio.run(migrate(postgres.url()))
        yield Backends(postgres.url(), redis_server.url(), postgres, redis_server)
    finally:
        redis_server.stop()
        postgres.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def make_settings(backends: Backends, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "development",
        "database_url": backends.database_url,
        "redis_url": backends.redis_url,
        "secret_key": TEST_SECRET_KEY,
        "db_pool_min_size": 1,
        "db_pool_max_size": 5,
        "api_keys": TEST_API_KEYS,
        "metrics_port": 0,  # many apps in one process: no metrics server each
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(backends: Backends) -> Settings:
    return make_settings(backends)


@pytest.fixture
async def db(backends: Backends) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection (outside the app) that starts each test from an empty catalog."""
    conn = await asyncpg.connect(backends.database_url)
    await conn.execute("TRUNCATE items, jobs, job_attempts RESTART IDENTITY")
    cache = redis.Redis.from_url(backends.redis_url)
    await cache.flushdb()
    await cache.aclose()
    try:
        yield conn
    finally:
        await conn.close()


class TableLock:
    """ACCESS EXCLUSIVE on `items`, held from `db` until released: reads of the table wait, for real.

    The way tests make a request slow (or hold a pool connection) without any test hook in the app.
    """

    def __init__(self, db: asyncpg.Connection) -> None:
        self.transaction = db.transaction()
        self.db = db
        self.held = False

    async def hold(self) -> TableLock:
        await self.transaction.start()
        await self.db.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        self.held = True
        return self

    async def __aenter__(self) -> TableLock:
        return await self.hold()

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self.transaction.rollback()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@asynccontextmanager
async def lifespan_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `app` with its real lifespan running (pool and Redis client open)."""
    async with app.router.lifespan_context(app) as state:
        # httpx's ASGI transport does not run the lifespan; hand its state over as a server would.
        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """A client that presents the writer's API key on every request."""
    async with lifespan_client(create_app(settings)) as http:
        http.headers.update(WRITER)
        yield http
