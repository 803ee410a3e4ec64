"""Schema migrations: versioned SQL files in service/migrations, applied in order.

Run as `python -m service.migrate` (by `make up`, and by the chart's
pre-install/pre-upgrade hook). Safe to run again (applied versions are
skipped) and safe to run from several pods at once: a PostgreSQL advisory
lock lets one migrator work while the others wait, then find nothing to do.
Each file runs in its own transaction together with its bookkeeping row, so a
failed migration leaves no half-applied schema. Editing a file after it was
applied is refused (its checksum is recorded).

Every migration runs under a `lock_timeout` (default 5s): a DDL statement that
queues behind a long transaction's lock would otherwise block every query on
that table behind itself, for as long as it waits. Past the timeout the
migration fails and can simply be run again. Header lines tune one file:

    -- migrate: lock_timeout=30s       this file's lock_timeout (ms, s or min)
    -- migrate: no-transaction         run outside a transaction, one statement at a time

`no-transaction` is for what PostgreSQL refuses inside a transaction block,
such as `CREATE INDEX CONCURRENTLY`. Such a file is not atomic: write each
statement so it can run again (`DROP INDEX CONCURRENTLY IF EXISTS` first), end
every statement with a semicolon at the end of its line, and let no other
line end with one.
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
_MARKER = re.compile(r"^--\s*migrate:\s*(.*?)\s*$")
_LOCK_TIMEOUT = re.compile(r"^\d+(ms|s|min)$")
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
DEFAULT_LOCK_TIMEOUT = "5s"


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

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def markers(self) -> dict[str, str]:
        """The `-- migrate:` header lines (before the first statement) as {name: value}."""
        found: dict[str, str] = {}
        for line in self.sql.splitlines():
            if line.strip() and not line.lstrip().startswith("--"):
                break
            match = _MARKER.match(line.strip())
            if match is None:
                continue
            name, _, value = match[1].partition("=")
            name, value = name.strip(), value.strip()
            if name == "no-transaction" and not value:
                found[name] = ""
            elif name == "lock_timeout" and _LOCK_TIMEOUT.match(value):
                found[name] = value
            else:
                raise MigrationError(
                    f"{self.label}.sql: unknown marker {match[1]!r}; use no-transaction or lock_timeout=<n>ms|s|min"
                )
        return found

    @property
    def transactional(self) -> bool:
        return "no-transaction" not in self.markers()

    def statements(self) -> list[str]:
        """The statements of a no-transaction file, split where a line ends with a semicolon."""
        parts = [part.strip() for part in _STATEMENT_END.split(self.sql)]
        return [
            part
            for part in parts
            if any(not line.lstrip().startswith("--") for line in part.splitlines() if line.strip())
        ]


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


async def _apply(conn: asyncpg.Connection, migration: Migration, lock_timeout: str) -> None:
    """Run one migration and record it; in one transaction unless the file says no-transaction."""
    timeout = migration.markers().get("lock_timeout", lock_timeout)
    record = (
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )
    if migration.transactional:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{timeout}'")
            await conn.execute(migration.sql)
            await conn.execute(*record)
        return
    # One statement per round trip: several in one query string share an implicit
    # transaction, which CREATE INDEX CONCURRENTLY refuses.
    await conn.execute(f"SET lock_timeout = '{timeout}'")
    try:
        for statement in migration.statements():
            await conn.execute(statement)
        await conn.execute(*record)
    finally:
        await conn.execute("RESET lock_timeout")


async def migrate(dsn: str, *, lock_wait_seconds: float = 600.0, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> list[str]:
    """Apply pending migrations; return the names of those applied by this call.

    `lock_wait_seconds` bounds the wait for another migrator; `lock_timeout` (PostgreSQL's
    syntax, e.g. "5s") bounds each migration's wait for a table lock, unless its file says otherwise.
    """
    if not _LOCK_TIMEOUT.match(lock_timeout):
        raise MigrationError(f"lock_timeout {lock_timeout!r}: use <n>ms, <n>s or <n>min")
    migrations = discover()
    for migration in migrations:
        migration.markers()  # a typo in a header fails before anything is applied
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
                if previous is not None:
                    if previous["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"{migration.label}.sql changed after it was applied; add a new migration instead"
                        )
                    continue
                await _apply(conn, migration, lock_timeout)
                applied_now.append(migration.label)
                logger.info("applied migration", extra={"migration": migration.label})
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
