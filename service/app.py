"""The application factory and its lifespan.

`create_app()` wires settings, middleware, error handlers and routers; the
lifespan opens the PostgreSQL pool and the Redis client, yields them as the
typed `State`, and closes them on shutdown (after in-flight requests finish).
Gunicorn loads it as `service.app:create_app()`; logging is configured by the
process entry point (service/gunicorn_conf.py), not here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as redis
from fastapi import FastAPI

from service import health
from service.config import Settings, load_settings
from service.db import create_pool
from service.errors import install_error_handlers
from service.items.router import router as items_router
from service.middleware import RequestContextMiddleware, RequestLimitsMiddleware
from service.state import Lifecycle, State

logger = logging.getLogger(__name__)


def create_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        str(settings.redis_url),
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_command_timeout_seconds,
        health_check_interval=30,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    lifecycle = Lifecycle(
        drain_seconds=settings.shutdown_drain_seconds,
        shutdown_budget_seconds=settings.in_flight_budget_seconds,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        pool = await create_pool(settings)
        cache = create_redis(settings)
        try:
            lifecycle.started = True
            logger.info("started", extra={"environment": settings.environment.value})
            yield {"settings": settings, "pool": pool, "redis": cache}
        finally:
            lifecycle.started = False
            await cache.aclose()
            await pool.close()
            logger.info("stopped")

    docs = settings.openapi_enabled
    app = FastAPI(
        title="Catalog service",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(items_router)
    # Added last = outermost: the request id exists before limits can refuse a request.
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_request_line_bytes=settings.max_request_line_bytes,
        max_header_count=settings.max_header_count,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
