"""PostgreSQL access: the asyncpg pool, its timeouts, and the breaker in front of it.

Every statement is bounded twice: by the server (`statement_timeout`, so a
runaway query is cancelled in PostgreSQL too) and by the client
(`command_timeout`). Acquiring a connection is bounded separately, so a
saturated pool answers 503 quickly instead of queueing requests forever. When
PostgreSQL is down, the circuit breaker turns requests away at once (503)
instead of letting each one wait for a connect timeout, and lets one trial
through every BREAKER_RESET_SECONDS so the pod recovers by itself.

Behind a transaction-mode pooler (DATABASE_POOL_MODE=transaction) a server
connection is shared transaction by transaction, so nothing here may rely on
session state: `connect_options` sends no startup parameter but
application_name (PgBouncer refuses the others: "unsupported startup
parameter: statement_timeout") and turns asyncpg's statement cache off (its
named prepared statements would land on other clients' server connections:
PgBouncer 1.18, Debian 12's, cannot track them; 1.21+ can, with
max_prepared_statements). The server-side statement_timeout then comes from
the role or database (`ALTER ROLE ... SET statement_timeout`), which
`create_pool` checks and reports; the client's command_timeout still cancels
a statement through the pooler. In session mode, `create_pool` checks that
the server kept the statement_timeout it was sent: a pooler that silently
drops startup parameters is one the pool cannot use in session mode.

After a failover a connection may survive on a server that is now read-only
(a switchover that demotes the old primary): a write there raises
ReadOnlySQLTransactionError, which is answered 503 and closes that connection
instead of returning it to the pool, so the next one is opened (with
`target_session_attrs=read-write` in DATABASE_URL) on the new primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.config import CommonSettings, ConfigurationError, Settings
from service.errors import ServiceUnavailable
from service.metrics import DB_POOL_ACQUIRE, instrument_connection
from service.resilience import CircuitBreaker, CircuitOpen, DependencyCall

logger = logging.getLogger("service.db")

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
    # A connection left on a server that is no longer the primary (a switchover demoted it).
    asyncpg.ReadOnlySQLTransactionError,
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


# asyncpg's default statement cache (named prepared statements, reused per connection).
STATEMENT_CACHE_SIZE = 100


def connect_options(settings: CommonSettings, application_name: str, **server_settings: str) -> dict[str, Any]:
    """Keyword arguments for asyncpg.connect / create_pool on DATABASE_URL: `server_settings` and
    the statement cache as DATABASE_POOL_MODE allows.

    Session mode: every `server_settings` entry is sent as a startup parameter. Transaction mode:
    only application_name (PgBouncer tracks it; it refuses the rest) and no statement cache (asyncpg
    then uses the unnamed statement, which lives within one Parse/Bind/Execute exchange).
    """
    if settings.transaction_pooled:
        return {"server_settings": {"application_name": application_name}, "statement_cache_size": 0}
    return {
        "server_settings": {"application_name": application_name, **server_settings},
        "statement_cache_size": STATEMENT_CACHE_SIZE,
    }


def _pooler_hint(error: Exception) -> ConfigurationError | None:
    """The configuration error a transaction-mode pooler's refusal means, or None."""
    if isinstance(error, asyncpg.ProtocolViolationError) and "unsupported startup parameter" in str(error):
        return ConfigurationError(
            f"configuration error: DATABASE_URL reaches a connection pooler that refused a startup parameter "
            f"({error}): it is in transaction mode; set DATABASE_POOL_MODE=transaction "
            "(and DATABASE_DIRECT_URL for the worker's LISTEN and the migration lock)"
        )
    return None


async def _create(settings: CommonSettings, **options: Any) -> Pool:
    try:
        pool = await asyncpg.create_pool(str(settings.database_url), **options)
    except asyncpg.ProtocolViolationError as error:
        hint = _pooler_hint(error)
        if hint is None:
            raise
        raise hint from None
    assert pool is not None
    return pool


async def _check_statement_timeout(pool: Pool, settings: CommonSettings, expected_ms: int) -> None:
    """Session mode: refuse a pooler that dropped the startup parameters. Transaction mode: say
    which server-side statement_timeout the pooler's connections carry (the role's or database's)."""
    try:
        async with pool.acquire() as connection, connection.transaction():
            # pg_settings gives statement_timeout in its base unit, milliseconds.
            in_ms = await connection.fetchval(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'"
            )
    except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError) as error:
        # asyncpg's named statements met another client's server connection: a transaction-mode pooler.
        await pool.close()
        raise ConfigurationError(
            f"configuration error: DATABASE_URL goes through a transaction-mode connection pooler "
            f"({type(error).__name__}: {error}); set DATABASE_POOL_MODE=transaction"
        ) from None
    value = f"{in_ms}ms"
    if not settings.transaction_pooled:
        if in_ms != expected_ms:
            await pool.close()
            raise ConfigurationError(
                f"configuration error: DATABASE_URL dropped the startup parameter statement_timeout (the server "
                f"says {value}, not {expected_ms}ms): it goes through a connection pooler that ignores startup "
                "parameters, likely in transaction mode; set DATABASE_POOL_MODE=transaction"
            )
        return
    if in_ms == 0 or in_ms > expected_ms:
        logger.warning(
            "the pooler's connections have a longer statement_timeout than DB_STATEMENT_TIMEOUT_SECONDS; "
            "set it on the role (ALTER ROLE ... SET statement_timeout) so PostgreSQL cancels runaway queries too",
            extra={"statement_timeout": value, "wanted_ms": expected_ms},
        )
    else:
        logger.info("statement_timeout through the pooler", extra={"statement_timeout": value})


async def create_pool(settings: CommonSettings, *, min_size: int | None = None, max_size: int | None = None) -> Pool:
    """The asyncpg pool of an API pod or a worker: sizes default to DB_POOL_MIN_SIZE / DB_POOL_MAX_SIZE.

    One factory for both, so the timeouts and the release policy cannot drift
    apart; the worker passes its own size (`worker_pool_max_size`). Raises
    ConfigurationError (naming DATABASE_POOL_MODE) when DATABASE_URL turns out
    to reach a transaction-mode pooler in session mode.
    """
    statement_timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    pool = await _create(
        settings,
        min_size=settings.db_pool_min_size if min_size is None else min_size,
        max_size=settings.db_pool_max_size if max_size is None else max_size,
        timeout=settings.db_connect_timeout_seconds,
        # The client gives up a little after the server would have cancelled.
        command_timeout=settings.db_statement_timeout_seconds + 1.0,
        max_inactive_connection_lifetime=300.0,
        **connect_options(
            settings,
            settings.service_name,
            statement_timeout=str(statement_timeout_ms),
            idle_in_transaction_session_timeout=str(statement_timeout_ms * 2),
        ),
        # asyncpg's default reset runs one more query on every release (UNLISTEN,
        # RESET ALL, CLOSE ALL, unlock advisory locks): a round trip per request.
        # Neither the request code nor the worker leaves session state behind on a
        # pooled connection (no session SET, LISTEN, session advisory locks or
        # cursors outside a transaction; the worker LISTENs on its own connection),
        # so only the built-in part stays: an open transaction is still rolled back.
        reset=_keep_session,
        init=instrument_connection,
    )
    if pool.get_min_size():  # else the service may start before PostgreSQL does: nothing to ask yet
        await _check_statement_timeout(pool, settings, statement_timeout_ms)
    return pool


async def create_probe_pool(settings: Settings) -> Pool:
    """One connection of its own for /readyz, outside the request pool.

    Readiness asks "does PostgreSQL answer?", not "is a pool connection free?":
    through the request pool a saturated pod (every connection busy for a
    moment) turned unready, and with every pod saturated at once the Service
    lost all its endpoints: load became an outage. One more connection per pod.
    """
    return await _create(
        settings,
        min_size=1,
        max_size=1,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.readiness_timeout_seconds,
        max_inactive_connection_lifetime=0,  # kept open: a probe must not pay for a new connection
        **connect_options(
            settings,
            f"{settings.service_name}-probe",
            statement_timeout=str(int(settings.readiness_timeout_seconds * 1000)),
        ),
        reset=_keep_session,
    )


@asynccontextmanager
async def acquire(pool: Pool, within_seconds: float | None = None) -> AsyncIterator[Connection]:
    """`pool.acquire()`, except that a connection found on a read-only server (a demoted primary)
    is closed instead of going back to the pool; the error still reaches the caller."""
    async with pool.acquire(timeout=within_seconds) as connection:
        try:
            yield connection
        except asyncpg.ReadOnlySQLTransactionError:
            connection.terminate()
            raise


def _lost(connection: Connection) -> bool:
    """Whether a borrowed connection is gone: closed, or already detached from its pool proxy (asyncpg
    detaches a connection it saw close, and the proxy then refuses every call, is_closed() included)."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True


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
            except asyncpg.ReadOnlySQLTransactionError:
                # This connection outlived its server's time as primary: never hand it out again.
                connection.terminate()
                raise
            except asyncpg.InterfaceError as error:
                if not _lost(connection):
                    raise  # a misuse of an open connection: a bug, answered 500
                # The server went away under the caller (a failover, a restart, pg_terminate_backend). Inside a
                # transaction block asyncpg then raises "the underlying connection is closed" (InterfaceError)
                # from the block's exit in place of the loss itself: PostgreSQL is unavailable, a 503 that
                # counts against the breaker (a POST /v1/jobs answered 500 in a failover drill).
                raise asyncpg.ConnectionDoesNotExistError("the connection to PostgreSQL was lost") from error
            finally:
                await self.pool.release(connection)
