"""The application factory and its lifespan.

`create_app()` wires settings, middleware, error handlers and routers; the
lifespan opens the PostgreSQL pool and the Redis client, builds what depends
on them (cache, rate limiter, breakers), yields them as the typed `State`,
and closes them on shutdown (after in-flight requests finish).
Gunicorn loads it as `service.app:create_app()`; logging is configured by the
process entry point (service/gunicorn_conf.py), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager

import redis.asyncio as redis
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import health, tracing
from service.auth import KeyRing
from service.cache import LocalTTLCache, TwoLevelCache
from service.config import ConfigurationError, Settings, load_settings
from service.db import INVALID_DATA_ERRORS, UNAVAILABLE_ERRORS, Database, Pool, create_pool, create_probe_pool
from service.errors import install_error_handlers
from service.exposition import serve_metrics
from service.items.router import router as items_router
from service.jobs.router import router as jobs_router
from service.metrics import HttpMetricsMiddleware, initialise_http_series, instrument_pool, watch_event_loop
from service.middleware import (
    PROBE_PATHS,
    HeadMiddleware,
    RequestBudgetMiddleware,
    RequestContextMiddleware,
    RequestLimitsMiddleware,
    security_headers,
)
from service.oidc import TokenVerifier, start_verifier
from service.profiling import RequestProfilerMiddleware
from service.ratelimit import RateLimiter, RateLimitMiddleware
from service.redisclock import RedisClock
from service.resilience import Bulkhead, CircuitBreaker, cancel_until_done
from service.state import CatalogApp, State

logger = logging.getLogger(__name__)


def create_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        str(settings.redis_url),
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_command_timeout_seconds,
        health_check_interval=30,
    )


def _breaker(name: str, settings: Settings) -> CircuitBreaker:
    return CircuitBreaker(name, settings.breaker_failure_threshold, settings.breaker_reset_seconds)


async def _start_limiter(
    settings: Settings, client: redis.Redis, clock: RedisClock, stack: contextlib.AsyncExitStack
) -> RateLimiter:
    """The rate limiter and its reconciler task; at exit the task stops and the pending counts are sent."""
    limiter = RateLimiter(
        client,
        clock.breaker,
        settings.service_name,
        local_share=settings.rate_limit_local_share,
        sync_seconds=settings.rate_limit_sync_seconds,
        clock=clock.now,
    )
    limiter.start()
    stack.push_async_callback(limiter.close)
    return limiter


async def _open_pools(settings: Settings, stack: contextlib.AsyncExitStack) -> tuple[Pool, Pool]:
    """The request pool and the probe's, closed with `stack`. A ConfigurationError (e.g. a
    transaction-mode pooler without DATABASE_POOL_MODE) is logged as one plain line first."""
    try:
        pool = await create_pool(settings)
    except ConfigurationError as error:
        logger.error(str(error.code))  # before the server's traceback, which buries it
        raise
    stack.push_async_callback(pool.close)
    probe_pool = await create_probe_pool(settings)
    stack.push_async_callback(probe_pool.close)
    return pool, probe_pool


async def _start_cache(
    settings: Settings,
    client: redis.Redis,
    clock: RedisClock,
    probe_pool: Pool,
    stack: contextlib.AsyncExitStack,
) -> TwoLevelCache | None:
    """The two-level cache with its trust keeper and invalidation listener (None when CACHE_ENABLED is false)."""
    if not settings.cache_enabled:
        return None
    local = LocalTTLCache(settings.cache_l1_max_items, settings.cache_l1_ttl_seconds)
    cache = TwoLevelCache(
        client,
        clock.breaker,  # the pod's one Redis breaker
        namespace=settings.service_name,
        l1=local,
        l2_ttl_seconds=settings.cache_l2_ttl_seconds,
        l1_lease_seconds=settings.cache_l1_lease_seconds,
        debt_pool=probe_pool,  # a few statements a second; off the request pool like the probe
        clock=clock,
    )
    await cache.refresh_trust()  # best effort: until a token exists, reads go to PostgreSQL
    keeper = asyncio.create_task(cache.keep_trust(), name="cache-trust")
    stack.push_async_callback(cancel_until_done, keeper)
    listener = asyncio.create_task(cache.listen_for_invalidations(), name="cache-invalidations")
    stack.push_async_callback(cancel_until_done, listener)
    return cache


async def _start_verifier(settings: Settings, stack: contextlib.AsyncExitStack) -> TokenVerifier | None:
    """The access-token verifier (None without OIDC_ISSUER_URL); never raises: an unreachable issuer is retried."""
    tokens = await start_verifier(settings)
    if tokens is not None:
        stack.push_async_callback(tokens.keys.close)
    return tokens


@asynccontextmanager
async def lifespan(app: CatalogApp) -> AsyncIterator[State]:
    """Opens what requests share (pool, Redis client, cache, limiter), yields it, closes it after the last request."""
    settings = app.settings
    async with contextlib.AsyncExitStack() as stack:
        if tracing.configure(settings.service_name):  # here, in the worker process: never before a fork
            stack.callback(tracing.shutdown)
        if settings.metrics_port:
            stack.callback(serve_metrics(settings.metrics_port, settings.host))
        pool, probe_pool = await _open_pools(settings, stack)
        instrument_pool(pool)
        lag_watch = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        stack.push_async_callback(cancel_until_done, lag_watch)
        client = create_redis(settings)
        stack.push_async_callback(client.aclose)
        redis_breaker = _breaker("redis", settings)
        # Redis's clock, shared by everything pods coordinate through Redis (cache trust, rate windows).
        clock = RedisClock(client, redis_breaker)
        await clock.sample()  # best effort: until it answers, the limiter uses the wall clock
        clock_keeper = asyncio.create_task(clock.keep_synced(), name="redis-clock")
        stack.push_async_callback(cancel_until_done, clock_keeper)
        cache = await _start_cache(settings, client, clock, probe_pool, stack)
        state: State = {
            "settings": settings,
            "db": Database(pool, _breaker("postgres", settings), settings.db_pool_acquire_timeout_seconds),
            "probe_pool": probe_pool,
            "redis": client,
            "keys": KeyRing(settings.api_keys),
            "tokens": await _start_verifier(settings, stack),
            "cache": cache,
            "limiter": (await _start_limiter(settings, client, clock, stack) if settings.rate_limit_enabled else None),
            "exports": Bulkhead("export", settings.export_max_concurrent),
        }
        # Everything allocated so far lives as long as the process: move it out of
        # the garbage collector's sight so collections stay short under load.
        gc.collect()
        gc.freeze()
        app.lifecycle.started = True
        logger.info("started", extra={"environment": settings.environment.value})
        try:
            yield state
        finally:
            app.lifecycle.started = False
    logger.info("stopped")


def middleware(settings: Settings) -> list[Middleware]:
    """The middleware in request order: each entry wraps every one after it and the routes."""
    optional_cors = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "X-Request-ID", *_RATE_LIMIT_HEADERS],
            max_age=600,
        )
    ]
    optional_profiler = [Middleware(RequestProfilerMiddleware, directory=settings.request_profiling_dir)]
    return [
        # First: the client address every later layer (rate limits, logs) sees is the proxy-resolved one.
        Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies),
        # Request id, access log and security headers; turns an exception from anything inside into a 500.
        Middleware(
            RequestContextMiddleware,
            response_headers=security_headers(settings),
            access_log_sample_rate=settings.access_log_sample_rate,
        ),
        # Development only (Settings refuses it in production): `X-Profile: 1` profiles one request.
        *(optional_profiler if settings.request_profiling else []),
        # Inside the request context so exceptions are counted; outside the limits and the rate
        # limiter so their 413/429s are counted too.
        Middleware(HttpMetricsMiddleware, excluded_paths=PROBE_PATHS),
        Middleware(
            RequestLimitsMiddleware,
            max_body_bytes=settings.max_body_bytes,
            max_request_line_bytes=settings.max_request_line_bytes,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
        ),
        *(optional_cors if settings.cors_allow_origins else []),
        Middleware(
            RateLimitMiddleware,
            reads=settings.rate_limit_reads,
            writes=settings.rate_limit_writes,
            fail_open=settings.rate_limit_fail_open,
        ),
        # The time budget covers the handler, not the layers above.
        Middleware(RequestBudgetMiddleware, seconds=settings.request_timeout_seconds),
        # Last: every layer above sees HEAD; the routes see GET (and the body is dropped on the way out).
        Middleware(HeadMiddleware),
    ]


def create_app(settings: Settings | None = None) -> CatalogApp:
    """The app for `settings` (default: from the environment), with its middleware, error handlers and routes."""
    settings = settings or load_settings()
    app = CatalogApp(settings, lifespan=lifespan, middleware=middleware(settings))
    install_error_handlers(app, database_unavailable=UNAVAILABLE_ERRORS, invalid_data=INVALID_DATA_ERRORS)
    app.include_router(items_router)  # the hot routes are matched first
    app.include_router(jobs_router)
    app.include_router(health.router)
    # Every series an alert reads exists at 0 before its first event (see initialise_http_series).
    initialise_http_series(_served_routes(app.routes), PROBE_PATHS)
    return app


def _served_routes(routes: Iterable[object]) -> Iterator[object]:
    """Every route, those of included routers too: FastAPI (0.16x) keeps an included router whole
    (`original_router`) rather than copying its routes into the app's list. Our routers carry their
    prefix in their routes' paths; tests/e2e/test_first_errors.py checks the result against the
    running app's OpenAPI document (generating that here cost 0.2 s per app)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _served_routes(included.routes)
        else:
            yield route


_RATE_LIMIT_HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
