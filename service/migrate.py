"""Schema migrations: versioned SQL files in service/migrations, applied in order.

Run as `python -m service.migrate` (by `make up`, and by the chart's
pre-install/pre-upgrade hook). Safe to run again (applied versions are
skipped) and safe to run from several pods at once: a PostgreSQL advisory
lock lets one migrator work while the others wait, then find nothing to do.
Each file runs in its own transaction together with its bookkeeping row, so a
failed migration leaves no half-applied schema. Editing a file after it was
applied is refused (its checksum is recorded).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg

from service.config import CommonSettings, ConfigurationError, load_settings_of
from service.logging import configure_logging

logger = logging.getLogger("service.migrate")

# An arbitrary constant shared by every migrator of this schema.
ADVISORY_LOCK_KEY = 0x6361_7461_6C6F_67  # "catalog"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover() -> list[Migration]:
    found = []
    for entry in resources.files("service.migrations").iterdir():
        if entry.name.endswith(".sql"):
            match = _FILENAME.match(entry.name)
            if match is None:
                raise MigrationError(f"{entry.name}: migration files are named NNNN_snake_case.sql")
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


async def _take_lock(conn: asyncpg.Connection, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    announced = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
        if time.monotonic() > deadline:
            raise MigrationError(f"another migrator held the lock for more than {wait_seconds:.0f} s")
        if not announced:
            logger.info("waiting for another migrator to finish")
            announced = True
        await asyncio.sleep(0.2)


async def migrate(dsn: str, *, lock_wait_seconds: float = 600.0) -> list[str]:
    """Apply pending migrations; return the names of those applied by this call."""
    migrations = discover()
    conn = await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": "catalog-migrate"})
    applied_now: list[str] = []
    try:
        await _take_lock(conn, lock_wait_seconds)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            recorded = {
                row["version"]: row for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
            for migration in migrations:
                previous = recorded.get(migration.version)
                label = f"{migration.version:04d}_{migration.name}"
                if previous is not None:
                    if previous["checksum"] != migration.checksum:
                        raise MigrationError(f"{label}.sql changed after it was applied; add a new migration instead")
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(label)
                logger.info("applied migration", extra={"migration": label})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


def main() -> int:
    try:
        settings = load_settings_of(CommonSettings)  # only DATABASE_URL and logging matter here
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(settings.log_level.value)
    try:
        applied = asyncio.run(migrate(str(settings.database_url)))
    except (MigrationError, OSError, asyncpg.PostgresError) as error:
        logger.error("migration failed", extra={"error": f"{type(error).__name__}: {error}"})
        return 1
    logger.info("schema up to date", extra={"applied": applied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
