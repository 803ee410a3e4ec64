"""Through a real PgBouncer in transaction mode: what the parametrised suites miss, what breaks without the setting.

The app's routes (items, export, jobs API, health) run both ways in their own
modules (`DATABASE_ROUTES`); here: every job-queue statement on shared server
connections, migrations (per-transaction lock, and the direct URL), the cache
debt, and the failures of the default (session) mode through the same pooler.
The pooler's pool is kept smaller than the clients so server connections are
shared between them, transaction by transaction, as in production.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
import servers  # deploy/local (tests/fixtures/__init__.py puts it on sys.path)

from service import migrate as migrations
from service.app import create_app
from service.cache import LocalTTLCache, TwoLevelCache
from service.config import CommonSettings, ConfigurationError
from service.db import connect_options, create_probe_pool
from service.jobs import repository
from service.jobs.schemas import AttemptOutcome, JobState
from service.resilience import CircuitBreaker
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, pooled_url, start_pgbouncer

SERVER_CONNECTIONS = 3  # fewer than the clients below: they share server connections


@pytest.fixture(scope="module")
def small_bouncer(backends: Backends) -> Iterator[Backends]:
    """PgBouncer (transaction mode) with a pool of SERVER_CONNECTIONS in front of the session's PostgreSQL."""
    workdir = servers.server_workdir("catalog-small-bouncer-")
    try:
        bouncer = start_pgbouncer(workdir, backends.database_url, pool_size=SERVER_CONNECTIONS)
    except servers.MissingDependency as missing:
        pytest.skip(str(missing))
    try:
        url = pooled_url(bouncer, backends.database_url)
        yield Backends(url, backends.redis_url, None, None, "transaction", backends.database_url)
    finally:
        bouncer.stop()


def common_settings(**values: object) -> CommonSettings:
    return CommonSettings(**values)  # type: ignore[arg-type]


def pooled_settings(backends: Backends) -> CommonSettings:
    return common_settings(database_url=backends.database_url, database_pool_mode="transaction")


@pytest.fixture
async def pooled_pool(small_bouncer: Backends, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """Ten client connections through PgBouncer, with the options transaction mode uses."""
    pool = await asyncpg.create_pool(
        small_bouncer.database_url,
        min_size=10,
        max_size=10,
        **connect_options(pooled_settings(small_bouncer), "catalog-test"),
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def new_job(n: int, key: str | None = None) -> repository.NewJob:
    return repository.NewJob("cpu.burn", {"milliseconds": n}, 2, "test", key, key, None, None, None)


async def test_every_queue_statement_through_pgbouncer_with_shared_server_connections(
    pooled_pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    async def enqueue(n: int) -> asyncpg.Record | None:
        async with pooled_pool.acquire() as conn:
            row, created = await repository.enqueue(conn, new_job(n, key=f"k{n % 20}"))
            return row if created else None

    created = [row for row in await asyncio.gather(*(enqueue(n) for n in range(60))) if row is not None]
    assert len(created) == 20  # idempotency keys k0..k19: each created once, then returned
    assert await db.fetchval("SELECT count(*) FROM jobs") == 20

    async def claim_three(worker: str) -> list[repository.Claim]:
        async with pooled_pool.acquire() as conn:
            return await repository.claim(conn, worker, 3, 30)

    batches = await asyncio.gather(*(claim_three(f"w{i}") for i in range(10)))
    claims = [claim for batch in batches for claim in batch]
    assert len(claims) == 20
    assert len({claim.id for claim in claims}) == 20  # SKIP LOCKED: no job claimed twice

    async with pooled_pool.acquire() as conn:
        held = await repository.renew(conn, [(claim.id, claim.lease_token) for claim in claims], 30)
        assert held == {claim.id for claim in claims}
        done, failed, released, expired = claims[:8], claims[8:12], claims[12:16], claims[16:]
        stored = await asyncio.gather(*(_complete(pooled_pool, claim) for claim in done + done))
        assert sorted(stored) == [False] * 8 + [True] * 8  # completion is idempotent: one result each
        assert await db.fetchval("SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded'") == 8
        for claim in failed:
            state = await repository.fail(
                conn, claim, "w", outcome=AttemptOutcome.FAILED, error="e", detail="d", retry_in_seconds=None
            )
            assert state is JobState.DEAD
        assert all([await repository.release(conn, claim, "w") for claim in released])
        await db.execute(
            "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = ANY($1::uuid[])",
            [claim.id for claim in expired],
        )
        reclaimed = await repository.reclaim_expired(conn)
        assert [r.state for r in reclaimed] == [JobState.FAILED] * 4
        counts = {row["kind"]: row for row in await repository.counts_by_kind(conn)}
        assert (counts["cpu.burn"]["runnable"], counts["cpu.burn"]["dead"]) == (8, 4)
        succeeded = await repository.get(conn, claims[0].id)
        assert succeeded is not None
        assert succeeded["state"] == "succeeded"
        cancelled = await repository.cancel(conn, released[0].id)
        assert cancelled is not None
        assert cancelled["state"] == "cancelled"
        await db.execute("UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE finished_at IS NOT NULL")
        assert await repository.prune(conn, 1.0) == 8 + 4 + 1  # succeeded, dead, cancelled


async def _complete(pool: asyncpg.Pool, claim: repository.Claim) -> bool:
    async with pool.acquire() as conn:
        return await repository.complete(conn, claim, "w", {"ok": True})


@pytest.fixture
async def fresh_database(backends: Backends, small_bouncer: Backends) -> AsyncIterator[tuple[str, str]]:
    """A new, empty database: (its direct URL, its URL through PgBouncer)."""
    name = f"migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(backends.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    direct = backends.database_url.rsplit("/", 1)[0] + f"/{name}"
    pooled = small_bouncer.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield direct, pooled
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_concurrent_migrators_through_pgbouncer_apply_each_migration_once(
    fresh_database: tuple[str, str],
) -> None:
    direct, pooled = fresh_database
    results = await asyncio.gather(*(migrations.migrate(pooled, per_transaction=True) for _ in range(4)))
    applied = sorted(name for result in results for name in result)
    assert applied == sorted(migration.label for migration in migrations.discover())
    assert await migrations.migrate(pooled, per_transaction=True) == []
    assert await migrations.migrate(direct) == []  # the session path agrees on what is applied
    conn = await asyncpg.connect(direct)
    try:
        # No advisory lock outlives its transaction on any server connection the pooler keeps.
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()


async def test_a_no_transaction_migration_through_pgbouncer_needs_the_direct_url(
    fresh_database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pooled = fresh_database
    real = migrations.discover()
    concurrent = migrations.Migration(
        real[-1].version + 1,
        "concurrent_index",
        "-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY i ON items (name);\n",
    )
    monkeypatch.setattr(migrations, "discover", lambda: [*real, concurrent])
    with pytest.raises(migrations.MigrationError, match=r"needs a session.*DATABASE_DIRECT_URL"):
        await migrations.migrate(pooled, per_transaction=True)


async def test_migrate_with_uses_the_direct_url_or_says_it_locks_per_transaction(
    fresh_database: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    direct, pooled = fresh_database
    without = common_settings(database_url=pooled, database_pool_mode="transaction")
    assert await asyncio.to_thread(migrations.migrate_with, without) == [m.label for m in migrations.discover()]
    assert "pg_advisory_xact_lock" in caplog.text
    with_direct = common_settings(database_url=pooled, database_pool_mode="transaction", database_direct_url=direct)
    assert await asyncio.to_thread(migrations.migrate_with, with_direct) == []


async def test_cache_debt_is_recorded_and_applied_through_pgbouncer(
    small_bouncer: Backends, db: asyncpg.Connection
) -> None:
    await db.execute("TRUNCATE cache_debt")
    settings = make_settings(small_bouncer)
    debt_pool = await create_probe_pool(settings)

    def cache(redis_url: str) -> tuple[TwoLevelCache, redis.Redis]:
        client = redis.Redis.from_url(redis_url, socket_timeout=0.3, socket_connect_timeout=0.3)
        two_level = TwoLevelCache(
            client,
            CircuitBreaker("redis", 3, 1.0),
            namespace="debt",
            l1=LocalTTLCache(10, 60),
            l2_ttl_seconds=60,
            debt_pool=debt_pool,
        )
        return two_level, client

    try:
        unreachable, client = cache(f"redis://127.0.0.1:{servers.free_port()}/0")
        await unreachable.invalidate("item:7")  # Redis down: the key goes to cache_debt
        await client.aclose()
        assert await db.fetchval("SELECT array_agg(key) FROM cache_debt") == ["item:7"]
        reachable, client = cache(small_bouncer.redis_url)
        assert await reachable.refresh_trust()  # applies the debt in Redis, then deletes it
        await client.aclose()
        assert await db.fetchval("SELECT count(*) FROM cache_debt") == 0
    finally:
        await debt_pool.close()


# --- what breaks without DATABASE_POOL_MODE=transaction -----------------------------------------


async def test_session_mode_through_pgbouncer_stops_at_startup_naming_the_setting(
    small_bouncer: Backends, db: asyncpg.Connection
) -> None:
    settings = make_settings(small_bouncer, database_pool_mode="session", database_direct_url=None)
    with pytest.raises(ConfigurationError) as refused:
        async with lifespan_client(create_app(settings)):
            pass
    message = str(refused.value)
    assert "unsupported startup parameter: statement_timeout" in message
    assert "set DATABASE_POOL_MODE=transaction" in message


@pytest.fixture
def lenient_bouncer(backends: Backends, tmp_path: Path) -> Iterator[Backends]:
    """A PgBouncer that drops the startup parameters it does not know instead of refusing them (a common setup)."""
    workdir = servers.server_workdir("catalog-lenient-bouncer-")
    bouncer = start_pgbouncer(
        workdir,
        backends.database_url,
        pool_size=SERVER_CONNECTIONS,
        extra=("ignore_startup_parameters = statement_timeout, idle_in_transaction_session_timeout",),
    )
    try:
        yield Backends(pooled_url(bouncer, backends.database_url), backends.redis_url, None, None)
    finally:
        bouncer.stop()


async def test_session_mode_through_a_pooler_that_drops_startup_parameters_is_refused_too(
    lenient_bouncer: Backends, db: asyncpg.Connection
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        async with lifespan_client(create_app(make_settings(lenient_bouncer))):
            pass
    assert "dropped the startup parameter statement_timeout" in str(refused.value)
    assert "set DATABASE_POOL_MODE=transaction" in str(refused.value)


async def test_what_breaks_without_the_setting_named_statements_on_shared_server_connections(
    lenient_bouncer: Backends, db: asyncpg.Connection
) -> None:
    """asyncpg's default statement cache through the pooler: statements prepared on one server
    connection are looked for on another. This is why transaction mode turns the cache off."""
    pool = await asyncpg.create_pool(lenient_bouncer.database_url, min_size=10, max_size=10)
    assert pool is not None

    async def query(n: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT $1::int + %d" % (n % 7), n)  # noqa: UP031 - seven distinct statements

    async def rounds() -> None:
        for _ in range(20):
            await asyncio.gather(*(query(n) for n in range(200)))

    try:
        with pytest.raises((asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)) as broke:
            await rounds()
    finally:
        await pool.close()
    assert "prepared statement" in str(broke.value)


async def test_statement_timeout_through_the_pooler_comes_from_the_role_and_is_reported(
    small_bouncer: Backends, backends: Backends, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Transaction mode cannot send statement_timeout; the startup check says what the server applies."""
    caplog.set_level(logging.INFO, "service.db")
    settings = make_settings(small_bouncer, db_statement_timeout_seconds=2.0, request_timeout_seconds=3.0)
    async with lifespan_client(create_app(settings)):
        pass
    assert "longer statement_timeout than DB_STATEMENT_TIMEOUT_SECONDS" in caplog.text
    caplog.clear()
    database = backends.database_url.rsplit("/", 1)[1].split("?")[0]
    await db.execute(f"ALTER DATABASE {database} SET statement_timeout = '2s'")
    try:
        await asyncio.sleep(0)  # new server connections pick it up; the pooler's old ones keep theirs
        admin = await asyncpg.connect(
            small_bouncer.database_url.rsplit("/", 1)[0] + "/pgbouncer", statement_cache_size=0
        )
        await admin.execute("RECONNECT")  # PgBouncer closes its server connections as they are released
        await admin.close()
        async with lifespan_client(create_app(settings)):
            pass
        assert "statement_timeout through the pooler" in caplog.text
        assert "longer statement_timeout" not in caplog.text
    finally:
        await db.execute(f"ALTER DATABASE {database} RESET statement_timeout")
