"""Migrations: idempotent, safe when several pods run them at once, and refuse edited history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service import migrate as migrations
from tests.conftest import Backends


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
