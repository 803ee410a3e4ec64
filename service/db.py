"""PostgreSQL access: the asyncpg pool, its timeouts, and the breaker in front of it.

Every statement is bounded twice: by the server (`statement_timeout`, so a
runaway query is cancelled in PostgreSQL too) and by the client
(`command_timeout`). Acquiring a connection is bounded separately, so a
saturated pool answers 503 quickly instead of queueing requests forever. When
PostgreSQL is down, the circuit breaker turns requests away at once (503)
instead of letting each one wait for a connect timeout, and lets one trial
through every BREAKER_RESET_SECONDS so the pod recovers by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.config import CommonSettings, Settings
from service.errors import ServiceUnavailable
from service.metrics import DB_POOL_ACQUIRE, instrument_connection
from service.resilience import CircuitBreaker, CircuitOpen, DependencyCall

Pool = asyncpg.Pool
# A plain connection (tests, migrations) or one borrowed from the pool: the repository takes either.
Connection = asyncpg.Connection | PoolConnectionProxy

# What "the database is unavailable" looks like: refused or lost connections (OSError
# covers refused, reset, unreachable and TimeoutError), a server shutting down or
# starting, too many connections, pool-acquire and statement timeouts. InternalClientError
# too: with PostgreSQL stopped under load (`make drill`'s postgres-stop) asyncpg raised "cannot
# switch to state 12; another operation (2) is in progress" from a connection the shutdown had
# broken mid-statement, and it reached the client as a 500.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.InternalClientError,
)


# What "the request carried a value PostgreSQL will not store" looks like: SQLSTATE class 22
# (invalid text representation, numeric out of range, character not in repertoire, string
# too long, ...; asyncpg raises DataError too for an argument it cannot encode, e.g. an int
# past int4/int8 or a lone surrogate) and the CHECK / NOT NULL constraints. Answered 422.
INVALID_DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.CheckViolationError,
    asyncpg.NotNullViolationError,
)


async def create_pool(settings: CommonSettings, *, min_size: int | None = None, max_size: int | None = None) -> Pool:
    """The asyncpg pool of an API pod or a worker: sizes default to DB_POOL_MIN_SIZE / DB_POOL_MAX_SIZE.

    One factory for both, so the timeouts and the release policy cannot drift
    apart; the worker passes its own size (`worker_pool_max_size`).
    """
    statement_timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    pool = await asyncpg.create_pool(
        str(settings.database_url),
        min_size=settings.db_pool_min_size if min_size is None else min_size,
        max_size=settings.db_pool_max_size if max_size is None else max_size,
        timeout=settings.db_connect_timeout_seconds,
        # The client gives up a little after the server would have cancelled.
        command_timeout=settings.db_statement_timeout_seconds + 1.0,
        max_inactive_connection_lifetime=300.0,
        server_settings={
            "application_name": settings.service_name,
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(statement_timeout_ms * 2),
        },
        # asyncpg's default reset runs one more query on every release (UNLISTEN,
        # RESET ALL, CLOSE ALL, unlock advisory locks): a round trip per request.
        # Neither the request code nor the worker leaves session state behind on a
        # pooled connection (no session SET, LISTEN, session advisory locks or
        # cursors outside a transaction; the worker LISTENs on its own connection),
        # so only the built-in part stays: an open transaction is still rolled back.
        reset=_keep_session,
        init=instrument_connection,
    )
    assert pool is not None
    return pool


async def create_probe_pool(settings: Settings) -> Pool:
    """One connection of its own for /readyz, outside the request pool.

    Readiness asks "does PostgreSQL answer?", not "is a pool connection free?":
    through the request pool a saturated pod (every connection busy for a
    moment) turned unready, and with every pod saturated at once the Service
    lost all its endpoints: load became an outage. One more connection per pod.
    """
    pool = await asyncpg.create_pool(
        str(settings.database_url),
        min_size=1,
        max_size=1,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.readiness_timeout_seconds,
        max_inactive_connection_lifetime=0,  # kept open: a probe must not pay for a new connection
        server_settings={
            "application_name": f"{settings.service_name}-probe",
            "statement_timeout": str(int(settings.readiness_timeout_seconds * 1000)),
        },
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(_: asyncpg.Connection) -> None:
    return None


class Database:
    """The pool plus the policy for borrowing from it."""

    def __init__(self, pool: Pool, breaker: CircuitBreaker, acquire_timeout_seconds: float) -> None:
        self.pool = pool
        self.breaker = breaker
        self.acquire_timeout_seconds = acquire_timeout_seconds
        # Statements are timed one by one (service/metrics.py's query logger); this counts the
        # borrowing and what happens on the connection against the breaker, errors by type.
        self._call = DependencyCall("postgres", None, breaker, UNAVAILABLE_ERRORS, timed=False)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; 503 at once while the breaker is open.

        Failures that mean "PostgreSQL is unavailable" (raised while acquiring or
        while the caller uses the connection) count against the breaker.
        """
        try:
            attempt = self._call()
        except CircuitOpen:
            raise ServiceUnavailable(
                "The database is unavailable; retry shortly.",
                retry_after_seconds=max(1, round(self.breaker.reset_seconds)),
            ) from None
        with attempt:
            # asyncio.timeout rather than acquire(timeout=): that one wraps every
            # acquire in asyncio.wait_for, a new task per request.
            waiting_since = time.perf_counter()
            async with asyncio.timeout(self.acquire_timeout_seconds):
                connection = await self.pool.acquire()
            DB_POOL_ACQUIRE.observe(time.perf_counter() - waiting_since)
            try:
                yield connection
            finally:
                await self.pool.release(connection)
