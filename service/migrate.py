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

Behind a transaction-mode pooler (DATABASE_POOL_MODE=transaction) a session
advisory lock would be taken on one server connection and released, or not,
on another; so the migrator connects to DATABASE_DIRECT_URL when it is given,
and otherwise takes the lock per transaction instead: each migration's
transaction takes `pg_advisory_xact_lock`, then looks again at what is
recorded, so two migrators still apply each file exactly once (a
`no-transaction` file is refused there: it needs a session).

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


_CREATE_BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
                             version    integer PRIMARY KEY,
                             name       text NOT NULL,
                             checksum   text NOT NULL,
                             applied_at timestamptz NOT NULL DEFAULT now())"""


def _already_applied(migration: Migration, recorded: asyncpg.Record | None) -> bool:
    if recorded is None:
        return False
    if recorded["checksum"] != migration.checksum:
        raise MigrationError(f"{migration.label}.sql changed after it was applied; add a new migration instead")
    return True


async def _migrate_in_session(conn: asyncpg.Connection, migrations: list[Migration], lock_timeout: str) -> list[str]:
    """Under the session advisory lock (taken by the caller): apply what is not recorded."""
    applied_now: list[str] = []
    await conn.execute(_CREATE_BOOKKEEPING)
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    recorded = {row["version"]: row for row in rows}
    for migration in migrations:
        if _already_applied(migration, recorded.get(migration.version)):
            continue
        await _apply(conn, migration, lock_timeout)
        applied_now.append(migration.label)
        logger.info("applied migration", extra={"migration": migration.label})
    return applied_now


async def _migrate_per_transaction(
    conn: asyncpg.Connection, migrations: list[Migration], lock_wait_seconds: float, lock_timeout: str
) -> list[str]:
    """Through a transaction-mode pooler: each migration in one transaction that takes the
    transaction-scoped advisory lock (waiting at most `lock_wait_seconds`), then reads the
    bookkeeping anew, so concurrent migrators apply each file once."""
    applied_now: list[str] = []
    for migration in migrations:
        timeout = migration.markers().get("lock_timeout", lock_timeout)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_wait_seconds * 1000)}ms'")
            try:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            except asyncpg.LockNotAvailableError:
                raise MigrationError(
                    f"another migrator held the lock for more than {lock_wait_seconds:.0f} s"
                ) from None
            await conn.execute(_CREATE_BOOKKEEPING)
            recorded = await conn.fetchrow(
                "SELECT version, name, checksum FROM schema_migrations WHERE version = $1", migration.version
            )
            if _already_applied(migration, recorded):
                continue
            if not migration.transactional:
                raise MigrationError(
                    f"{migration.label}.sql is no-transaction: it needs a session, which a transaction-mode "
                    "pooler cannot give; set DATABASE_DIRECT_URL to a direct connection to PostgreSQL"
                )
            await conn.execute(f"SET LOCAL lock_timeout = '{timeout}'")
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        applied_now.append(migration.label)
        logger.info("applied migration", extra={"migration": migration.label})
    return applied_now


async def migrate(
    dsn: str,
    *,
    lock_wait_seconds: float = 600.0,
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    per_transaction: bool = False,
) -> list[str]:
    """Apply pending migrations; return the names of those applied by this call.

    `lock_wait_seconds` bounds the wait for another migrator; `lock_timeout` (PostgreSQL's
    syntax, e.g. "5s") bounds each migration's wait for a table lock, unless its file says otherwise.
    `per_transaction`: `dsn` is a transaction-mode pooler; no session state is used (the lock is
    taken per migration, with pg_advisory_xact_lock, and asyncpg's statement cache is off).
    """
    if not _LOCK_TIMEOUT.match(lock_timeout):
        raise MigrationError(f"lock_timeout {lock_timeout!r}: use <n>ms, <n>s or <n>min")
    migrations = discover()
    for migration in migrations:
        migration.markers()  # a typo in a header fails before anything is applied
    conn = await asyncpg.connect(
        dsn,
        timeout=10,
        server_settings={"application_name": "catalog-migrate"},
        statement_cache_size=0 if per_transaction else 100,
    )
    try:
        if per_transaction:
            return await _migrate_per_transaction(conn, migrations, lock_wait_seconds, lock_timeout)
        await _take_lock(conn, lock_wait_seconds)
        try:
            return await _migrate_in_session(conn, migrations, lock_timeout)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


def migrate_with(settings: CommonSettings) -> list[str]:
    """Apply pending migrations the way DATABASE_POOL_MODE / DATABASE_DIRECT_URL allow (logged)."""
    session_url = settings.session_database_url
    if session_url is not None:
        return asyncio.run(migrate(session_url))
    logger.warning(
        "DATABASE_POOL_MODE=transaction without DATABASE_DIRECT_URL: the migration lock is taken per "
        "transaction (pg_advisory_xact_lock), and no-transaction migrations are refused"
    )
    return asyncio.run(migrate(str(settings.database_url), per_transaction=True))


def main() -> int:
    try:
        settings = load_settings_of(CommonSettings)  # only DATABASE_URL and logging matter here
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(settings.log_level.value)
    try:
        applied = migrate_with(settings)
    except (MigrationError, OSError, asyncpg.PostgresError) as error:
        logger.error("migration failed", extra={"error": f"{type(error).__name__}: {error}"})
        return 1
    logger.info("schema up to date", extra={"applied": applied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
