"""The typed state the lifespan yields, the process lifecycle, and the dependencies that expose them.

Resources reach handlers only through these `Annotated` aliases, never module
globals, so a test (or a fork) can build an app with other resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, cast

import redis.asyncio as redis
from fastapi import Depends, FastAPI, Request
from starlette.types import Receive, Scope, Send

from service import tracing
from service.auth import KeyRing, read_access
from service.cache import TwoLevelCache
from service.config import Settings
from service.db import Connection, Database, Pool
from service.middleware import keep_connection_after_complete_response
from service.oidc import TokenVerifier
from service.ratelimit import RateLimiter
from service.resilience import Bulkhead


@dataclass
class Lifecycle:
    """Where the process is in its life, as `service.server` sets it.

    `draining`: SIGTERM arrived; /readyz answers 503. `closing_connections`: the worker
    is on its way out (SIGTERM, a gunicorn reload, a MAX_REQUESTS recycle); every
    response says `Connection: close`. `last_routed_request`: when (monotonic seconds)
    the last non-probe request started while closing, to tell whether anyone still
    routes requests here.
    """

    drain_seconds: float = 0.0
    shutdown_budget_seconds: float = 30.0
    started: bool = False
    draining: bool = False
    closing_connections: bool = False
    last_routed_request: float = 0.0


class CatalogApp(FastAPI):
    """The FastAPI app with the two things outside its lifespan, typed: its settings and its lifecycle.

    The lifespan reads `settings`; the probes and the server (service/server.py)
    read `lifecycle`, which exists before the lifespan runs and after it ends.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        docs = settings.openapi_enabled
        super().__init__(
            title="Catalog service",
            version="0.1.0",
            openapi_url="/openapi.json" if docs else None,
            docs_url="/docs" if docs else None,
            redoc_url=None,
            # Starlette would answer `/v1/items/` with a redirect to an absolute URL built from
            # the client's Host header. A trailing slash is simply another path here: 404.
            redirect_slashes=False,
            telemetry=tracing.FASTAPI_TELEMETRY_OFF,  # type: ignore[arg-type]  # our middleware traces
            **kwargs,
        )
        self.settings = settings
        self.lifecycle = Lifecycle(
            drain_seconds=settings.shutdown_drain_seconds,
            shutdown_budget_seconds=settings.in_flight_budget_seconds,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Outside Starlette's ServerErrorMiddleware, which re-raises whatever it caught.
        await keep_connection_after_complete_response(super().__call__, scope, receive, send)


def lifecycle(request: Request) -> Lifecycle:
    """The lifecycle of the app serving `request`."""
    return cast(CatalogApp, request.app).lifecycle


class State(TypedDict):
    settings: Settings
    db: Database
    probe_pool: Pool  # one connection for /readyz, outside the request pool
    redis: redis.Redis
    keys: KeyRing
    tokens: TokenVerifier | None  # None when OIDC_ISSUER_URL is not set
    cache: TwoLevelCache | None  # None when CACHE_ENABLED is false
    limiter: RateLimiter | None  # None when RATE_LIMIT_ENABLED is false
    exports: Bulkhead


# Every dependency is `async def`, even when it does no I/O: FastAPI runs a plain
# `def` dependency in a worker thread, which costs far more than the work itself.


def _state(request: Request) -> State:
    # The lifespan's state, copied into each request's scope by the server.
    return cast(State, request.scope["state"])


async def get_settings(request: Request) -> Settings:
    return _state(request)["settings"]


async def get_database(request: Request) -> Database:
    return _state(request)["db"]


async def get_probe_pool(request: Request) -> Pool:
    return _state(request)["probe_pool"]


async def get_redis(request: Request) -> redis.Redis:
    return _state(request)["redis"]


async def get_cache(request: Request) -> TwoLevelCache | None:
    return _state(request)["cache"]


async def get_exports(request: Request) -> Bulkhead:
    return _state(request)["exports"]


def readable_state(scope: str) -> Callable[[Request], Awaitable[State]]:
    """A dependency: the state, for a request allowed to read with `scope` (READS_REQUIRE_KEY).

    One dependency instead of two on hot read paths (FastAPI resolves each for every request).
    """
    check = read_access(scope)

    async def dependency(request: Request) -> State:
        await check(request)
        return _state(request)

    return dependency


async def get_connection(request: Request) -> AsyncIterator[Connection]:
    async with _state(request)["db"].connection() as connection:
        yield connection


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ProbePoolDep = Annotated[Pool, Depends(get_probe_pool)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
CacheDep = Annotated[TwoLevelCache | None, Depends(get_cache)]
ExportsDep = Annotated[Bulkhead, Depends(get_exports)]
ConnectionDep = Annotated[Connection, Depends(get_connection)]
# Reads take everything through this one dependency: each FastAPI dependency costs
# about 8 us per request, a third of a cache hit (bench/results/request_path.md).
