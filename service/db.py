"""PostgreSQL access: the asyncpg pool and its timeouts.

Every statement is bounded twice: by the server (`statement_timeout`, so a
runaway query is cancelled in PostgreSQL too) and by the client
(`command_timeout`). Acquiring a connection is bounded separately, so a
saturated pool answers 503 quickly instead of queueing requests forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.config import Settings

Pool = asyncpg.Pool
# A plain connection (tests, migrations) or one borrowed from the pool: the repository takes either.
Connection = asyncpg.Connection | PoolConnectionProxy


async def create_pool(settings: Settings) -> Pool:
    statement_timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    pool = await asyncpg.create_pool(
        str(settings.database_url),
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_connect_timeout_seconds,
        # The client gives up a little after the server would have cancelled.
        command_timeout=settings.db_statement_timeout_seconds + 1.0,
        max_inactive_connection_lifetime=300.0,
        server_settings={
            "application_name": settings.service_name,
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(statement_timeout_ms * 2),
        },
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def acquire(pool: Pool, wait_seconds: float) -> AsyncIterator[Connection]:
    """A connection from the pool, or `TimeoutError` (answered as 503) after `wait_seconds`."""
    async with pool.acquire(timeout=wait_seconds) as connection:
        yield connection
