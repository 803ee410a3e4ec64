"""Migrations: idempotent, safe when several pods run them at once, and refuse edited history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from service import migrate as migrations
from tests.fixtures.backends import Backends


@pytest.fixture
async def empty_schema(backends: Backends) -> AsyncIterator[str]:
    """A DSN whose search_path is a new, empty schema: a fresh database as far as migrate can tell."""
    schema = f"migrate_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(backends.database_url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in backends.database_url else "?"
    try:
        yield f"{backends.database_url}{separator}search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_applies_every_migration_once(empty_schema: str) -> None:
    expected = [f"{m.version:04d}_{m.name}" for m in migrations.discover()]
    assert await migrations.migrate(empty_schema) == expected
    assert await migrations.migrate(empty_schema) == []
    conn = await asyncpg.connect(empty_schema)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(expected)
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_migration_exactly_once(empty_schema: str) -> None:
    results = await asyncio.gather(*(migrations.migrate(empty_schema) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in migrations.discover())
    assert sum(1 for result in results if result) == 1


async def test_an_edited_migration_is_refused(empty_schema: str) -> None:
    await migrations.migrate(empty_schema)
    conn = await asyncpg.connect(empty_schema)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        await migrations.migrate(empty_schema)


async def test_a_failing_migration_leaves_nothing_half_applied(
    empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrations.discover()
    broken = migrations.Migration(real[-1].version + 1, "broken", "CREATE TABLE half_done (id int); SELECT 1/0;")
    monkeypatch.setattr(migrations, "discover", lambda: [*real, broken])
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrations.migrate(empty_schema)
    conn = await asyncpg.connect(empty_schema)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == real[-1].version
        # The lock was released: the next migrator is not stuck behind the failed one.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", migrations.ADVISORY_LOCK_KEY)
        await conn.execute("SELECT pg_advisory_unlock($1)", migrations.ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _applied_versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()


def _with(monkeypatch: pytest.MonkeyPatch, name: str, sql: str) -> migrations.Migration:
    real = migrations.discover()
    extra = migrations.Migration(real[-1].version + 1, name, sql)
    monkeypatch.setattr(migrations, "discover", lambda: [*real, extra])
    return extra


CONCURRENT_INDEX = """-- Build the index without blocking writes.
-- migrate: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS items_name;
CREATE INDEX CONCURRENTLY items_name
    ON items (name);
"""


async def test_a_no_transaction_migration_can_create_an_index_concurrently(
    empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = _with(monkeypatch, "items_name", CONCURRENT_INDEX)
    assert not extra.transactional
    assert len(extra.statements()) == 2
    assert await migrations.migrate(empty_schema) == [f"{m.version:04d}_{m.name}" for m in migrations.discover()]
    conn = await asyncpg.connect(empty_schema)
    try:
        valid = await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('items_name')")
        assert valid is True
    finally:
        await conn.close()
    assert (await _applied_versions(empty_schema))[-1] == extra.version


async def test_without_the_marker_a_concurrent_index_is_refused_and_nothing_is_recorded(
    empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = _with(monkeypatch, "items_name", CONCURRENT_INDEX.replace("-- migrate: no-transaction\n", ""))
    assert extra.transactional
    with pytest.raises(asyncpg.ActiveSQLTransactionError):
        await migrations.migrate(empty_schema)
    assert extra.version not in await _applied_versions(empty_schema)


async def _blocked_by_a_reader(dsn: str, run: Callable[[], Awaitable[list[str]]]) -> float:
    """Run `run` while another session holds ACCESS SHARE on items (a long read); its duration."""
    reader = await asyncpg.connect(dsn)
    try:
        async with reader.transaction():
            await reader.execute("LOCK TABLE items IN ACCESS SHARE MODE")
            started = time.monotonic()
            with pytest.raises(asyncpg.LockNotAvailableError):
                await run()
            return time.monotonic() - started
    finally:
        await reader.close()


async def test_a_migration_waiting_for_a_lock_gives_up_at_its_lock_timeout(
    empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrations.migrate(empty_schema)
    extra = _with(monkeypatch, "items_note", "ALTER TABLE items ADD COLUMN note text;")
    waited = await _blocked_by_a_reader(empty_schema, lambda: migrations.migrate(empty_schema, lock_timeout="300ms"))
    assert 0.25 < waited < 3
    assert extra.version not in await _applied_versions(empty_schema)
    # Once the reader is gone the same migration goes through.
    assert await migrations.migrate(empty_schema) == [f"{extra.version:04d}_items_note"]


async def test_a_file_can_set_its_own_lock_timeout(empty_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await migrations.migrate(empty_schema)
    _with(monkeypatch, "items_note", "-- migrate: lock_timeout=200ms\nALTER TABLE items ADD COLUMN note text;")
    waited = await _blocked_by_a_reader(empty_schema, lambda: migrations.migrate(empty_schema, lock_timeout="1min"))
    assert waited < 3


@pytest.mark.parametrize(
    "header", ["-- migrate: no-transactions", "-- migrate: lock_timeout=5", "-- migrate: lock_timeout=1h"]
)
async def test_an_unknown_or_malformed_marker_is_refused_before_anything_runs(
    empty_schema: str, monkeypatch: pytest.MonkeyPatch, header: str
) -> None:
    _with(monkeypatch, "marked", f"{header}\nCREATE TABLE marked (id int);")
    with pytest.raises(migrations.MigrationError, match="unknown marker"):
        await migrations.migrate(empty_schema)
    conn = await asyncpg.connect(empty_schema)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()
    with pytest.raises(migrations.MigrationError, match="lock_timeout"):
        await migrations.migrate(empty_schema, lock_timeout="soon")
