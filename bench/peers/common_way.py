"""The same features, the common way: what most teams would build with the usual libraries.

FastAPI with `response_model`; slowapi rate limits on Redis storage (the same
limit as ours: per client address, counted on every request); a Redis
read-through cache of the item's JSON (`PEER_CACHE=off` turns it off, for the
database path); prometheus-fastapi-instrumentator for the HTTP metrics;
python-json-logger for a JSON access line with a request id from an
`@app.middleware("http")`. It stands alone (imports nothing from `service`)
and needs the `bench` dependency group (`uv sync --group bench`, which
`make bench` runs). Served as `uvicorn bench.peers.common_way:app` with
DATABASE_URL and REDIS_URL set.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel
from pythonjsonlogger.json import JsonFormatter
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

SELECT = "SELECT id, sku, name, category, price_cents, stock, created_at, updated_at FROM items"
CACHE = os.environ.get("PEER_CACHE", "on") == "on"
RATE = os.environ.get("PEER_RATE_LIMIT", "1000000000/hour")  # counted on every request, never reached

handler = logging.StreamHandler()
handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
access_log = logging.getLogger("peer.access")
access_log.addHandler(handler)
access_log.setLevel(logging.INFO)
access_log.propagate = False


class Item(BaseModel):
    id: int
    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    created_at: datetime
    updated_at: datetime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10)
    app.state.redis = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    yield
    await app.state.redis.aclose()
    await app.state.pool.close()


limiter = Limiter(key_func=get_remote_address, storage_uri=os.environ["REDIS_URL"])
app = FastAPI(lifespan=lifespan)
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type, unused-ignore]
Instrumentator().instrument(app).expose(app)


@app.middleware("http")
async def request_id_and_access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Request-ID"] = request_id
    access_log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.url.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )
    return response


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def get_redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.redis
    return client


@app.get("/v1/items/{item_id}", response_model=Item)
@limiter.limit(RATE)  # type: ignore[untyped-decorator, unused-ignore]  # Any without the bench group
async def get_item(
    request: Request,
    item_id: int,
    pool: Annotated[asyncpg.Pool, Depends(get_pool)],
    cache: Annotated[aioredis.Redis, Depends(get_redis)],
) -> Item:
    key = f"item:{item_id}"
    if CACHE:
        cached = await cache.get(key)
        if cached is not None:
            return Item.model_validate_json(cached)
    row = await pool.fetchrow(f"{SELECT} WHERE id = $1", item_id)
    if row is None:
        raise HTTPException(404)
    item = Item(**dict(row))
    if CACHE:
        await cache.set(key, item.model_dump_json(), ex=60)
    return item
