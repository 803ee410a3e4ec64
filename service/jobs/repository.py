"""Job SQL: the queue's every statement, one function each. Callers pass the connection.

The queue's guarantees live here, in SQL:
- enqueue is an INSERT plus `pg_notify` in one transaction, so a job is
  announced only once it exists (NOTIFY is delivered at commit);
- a claim takes runnable jobs with `FOR UPDATE SKIP LOCKED` (concurrent
  workers never wait on, or take, each other's jobs) and leases each with a
  fresh token that every later statement about that attempt must present;
- completion and failure are single statements that only apply while the
  token still holds, so an attempt whose lease was taken over cannot store a
  result: a job that ran twice stores one (also enforced by a unique index);
- the reaper turns expired leases back into runnable jobs, or `dead` ones once
  their attempts are spent.

Why not pgqueuer, which has LISTEN/NOTIFY, retries, a held/dead state and
heartbeat re-pick: its jobs are async functions in the worker's event loop (no
child process a timeout can kill), a re-pick after a lost heartbeat does not
count an attempt, and completion is not tied to the lease holder, which are
the three guarantees above and in service/worker/.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import orjson

from service.db import Connection
from service.jobs.schemas import AttemptOutcome, JobState

CHANNEL: Final = "jobs"  # LISTEN/NOTIFY channel: a wake-up, never the only copy of anything
_COLUMNS: Final = (
    "id, kind, params::text AS params, state, attempts, max_attempts, run_at, created_at, started_at, "
    "finished_at, result::text AS result, error, request_id"
)


def job_document(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A job row as the API shows it."""
    job = dict(row.items())
    job["id"] = str(job["id"])  # asyncpg's UUID type is not one orjson knows
    job["params"] = orjson.loads(job["params"])
    job["result"] = orjson.loads(job["result"]) if job["result"] is not None else None
    return job


# --- the API's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    kind: str
    params: dict[str, Any]
    max_attempts: int
    created_by: str | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    traceparent: str | None
    tracestate: str | None


async def enqueue(conn: Connection, job: NewJob) -> tuple[asyncpg.Record, bool]:
    """Insert the job and wake a worker; return (row, created). With an idempotency key
    already used by this caller, return the existing job instead (created False)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            INSERT INTO jobs (kind, params, max_attempts, created_by, idempotency_key, request_hash,
                              request_id, traceparent, tracestate)
            VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING {_COLUMNS}, request_hash
            """,  # noqa: S608 - only the constant column list is interpolated
            job.kind,
            orjson.dumps(job.params).decode(),
            job.max_attempts,
            job.created_by,
            job.idempotency_key,
            job.request_hash,
            job.request_id,
            job.traceparent,
            job.tracestate,
        )
        if row is not None:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, job.kind)
            return row, True
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS}, request_hash FROM jobs WHERE created_by IS NOT DISTINCT FROM $1 AND idempotency_key = $2",  # noqa: S608
        job.created_by,
        job.idempotency_key,
    )
    assert existing is not None  # the conflicting row exists: jobs are deleted only long after they finish
    return existing, False


async def get(conn: Connection, job_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)  # noqa: S608


async def cancel(conn: Connection, job_id: UUID) -> asyncpg.Record | None:
    """Cancel a job that is not running or finished; None if there was none to cancel."""
    return await conn.fetchrow(
        f"""
        UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
        WHERE id = $1 AND state IN ('queued', 'failed')
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        job_id,
    )


# --- the worker's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One leased attempt of a job."""

    id: UUID
    kind: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_token: UUID
    run_at: datetime
    claimed_at: datetime
    request_id: str | None
    traceparent: str | None
    tracestate: str | None


async def claim(conn: Connection, worker: str, limit: int, lease_seconds: float) -> list[Claim]:
    rows = await conn.fetch(
        """
        WITH runnable AS (
            SELECT id FROM jobs
            WHERE state IN ('queued', 'failed') AND run_at <= now()
            ORDER BY run_at, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE jobs AS j
        SET state = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
            lease_expires_at = clock_timestamp() + make_interval(secs => $2), worker = $3,
            started_at = coalesce(j.started_at, clock_timestamp()), updated_at = clock_timestamp()
        FROM runnable
        WHERE j.id = runnable.id
        RETURNING j.id, j.kind, j.params::text AS params, j.attempts, j.max_attempts, j.lease_token, j.run_at,
                  clock_timestamp() AS claimed_at, j.request_id, j.traceparent, j.tracestate
        """,
        limit,
        lease_seconds,
        worker,
    )
    claims = [
        Claim(
            id=row["id"],
            kind=row["kind"],
            params=orjson.loads(row["params"]),
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            lease_token=row["lease_token"],
            run_at=row["run_at"],
            claimed_at=row["claimed_at"],
            request_id=row["request_id"],
            traceparent=row["traceparent"],
            tracestate=row["tracestate"],
        )
        for row in rows
    ]
    claims.sort(key=lambda claim: (claim.run_at, claim.id))
    return claims


async def renew(conn: Connection, leases: list[tuple[UUID, UUID]], lease_seconds: float) -> set[UUID]:
    """Extend the leases still held; return the ids of the jobs whose lease held."""
    rows = await conn.fetch(
        """
        UPDATE jobs AS j SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
        FROM unnest($1::uuid[], $2::uuid[]) AS held (id, token)
        WHERE j.id = held.id AND j.lease_token = held.token AND j.state = 'running'
        RETURNING j.id
        """,
        [job_id for job_id, _ in leases],
        [token for _, token in leases],
        lease_seconds,
    )
    return {row["id"] for row in rows}


async def complete(conn: Connection, claim: Claim, worker: str, result: dict[str, Any]) -> bool:
    """Store the result, if this attempt still holds the job; False if the lease was lost."""
    stored = await conn.fetchval(
        """
        WITH done AS (
            UPDATE jobs SET state = 'succeeded', result = $3::jsonb, error = NULL, lease_token = NULL,
                            lease_expires_at = NULL, finished_at = clock_timestamp(), updated_at = clock_timestamp()
            WHERE id = $1 AND lease_token = $2 AND state = 'running'
            RETURNING id, attempts
        )
        INSERT INTO job_attempts (job_id, attempt, worker, outcome, started_at)
        SELECT id, attempts, $4, 'succeeded', $5 FROM done
        RETURNING true
        """,
        claim.id,
        claim.lease_token,
        orjson.dumps(result).decode(),
        worker,
        claim.claimed_at,
    )
    return stored is not None


async def fail(
    conn: Connection,
    claim: Claim,
    worker: str,
    *,
    outcome: AttemptOutcome,
    error: str,
    detail: str,
    retry_in_seconds: float | None,
) -> JobState | None:
    """Record a failed attempt: `failed` with the next try at now + retry_in_seconds, or
    `dead` when retry_in_seconds is None or no attempts are left. The job shows `error`
    (one line, for the API); the attempt keeps `detail` (the traceback, for operators).
    Returns the new state, or None when the lease was lost (someone else owns the job now)."""
    state = await conn.fetchval(
        """
        WITH done AS (
            UPDATE jobs
            SET state = CASE WHEN $5::float8 IS NULL OR attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                run_at = CASE WHEN $5::float8 IS NULL OR attempts >= max_attempts THEN run_at
                              ELSE clock_timestamp() + make_interval(secs => $5::float8) END,
                finished_at = CASE WHEN $5::float8 IS NULL OR attempts >= max_attempts
                                   THEN clock_timestamp() END,
                error = $3, lease_token = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
            WHERE id = $1 AND lease_token = $2 AND state = 'running'
            RETURNING id, attempts, state
        ), history AS (
            INSERT INTO job_attempts (job_id, attempt, worker, outcome, error, started_at)
            SELECT id, attempts, $4, $6, $8, $7 FROM done
        )
        SELECT state FROM done
        """,
        claim.id,
        claim.lease_token,
        error,
        worker,
        retry_in_seconds,
        outcome,
        claim.claimed_at,
        detail,
    )
    return JobState(state) if state is not None else None


async def release(conn: Connection, claim: Claim, worker: str) -> bool:
    """Give a job back without spending an attempt (the worker is shutting down)."""
    released = await conn.fetchval(
        """
        WITH done AS (
            UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = clock_timestamp(),
                            lease_token = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
            WHERE id = $1 AND lease_token = $2 AND state = 'running'
            RETURNING id, attempts
        ), history AS (
            INSERT INTO job_attempts (job_id, attempt, worker, outcome, error, started_at)
            SELECT id, attempts + 1, $3, 'released', 'the worker shut down before the job finished', $4 FROM done
        )
        SELECT true FROM done, LATERAL pg_notify($5, 'released')  -- pg_notify returns void: NULL to asyncpg
        """,
        claim.id,
        claim.lease_token,
        worker,
        claim.claimed_at,
        CHANNEL,
    )
    return released is not None


@dataclass(frozen=True)
class Reclaimed:
    kind: str
    state: JobState  # failed (runnable again) or dead (attempts spent)


async def reclaim_expired(conn: Connection) -> list[Reclaimed]:
    """Jobs whose worker stopped renewing its lease (killed, frozen, partitioned) run again."""
    rows = await conn.fetch(
        """
        WITH expired AS (
            SELECT id, updated_at AS claimed_at FROM jobs  -- renewals leave updated_at alone
            WHERE state = 'running' AND lease_expires_at < clock_timestamp()
            FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE jobs AS j
            SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'failed' END,
                run_at = clock_timestamp(),
                finished_at = CASE WHEN j.attempts >= j.max_attempts THEN clock_timestamp() END,
                error = 'lease expired: worker ' || coalesce(j.worker, '?') || ' stopped renewing it',
                lease_token = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
            FROM expired
            WHERE j.id = expired.id
            RETURNING j.id, j.kind, j.state, j.attempts, j.worker, j.error, expired.claimed_at
        ), history AS (
            INSERT INTO job_attempts (job_id, attempt, worker, outcome, error, started_at)
            SELECT id, attempts, coalesce(worker, '?'), 'lost', error, claimed_at FROM done
            ON CONFLICT DO NOTHING
        )
        SELECT kind, state FROM done
        """
    )
    if rows:
        await conn.execute("SELECT pg_notify($1, 'reclaimed')", CHANNEL)
    return [Reclaimed(row["kind"], JobState(row["state"])) for row in rows]


async def prune(conn: Connection, retention_hours: float, batch: int = 1000) -> int:
    """Delete up to `batch` jobs that finished more than `retention_hours` ago."""
    deleted = await conn.fetchval(
        """
        WITH old AS (
            SELECT id FROM jobs
            WHERE state IN ('succeeded', 'dead', 'cancelled')
              AND finished_at < now() - make_interval(secs => $1 * 3600)
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ), gone AS (DELETE FROM jobs USING old WHERE jobs.id = old.id RETURNING 1)
        SELECT count(*) FROM gone
        """,
        retention_hours,
        batch,
    )
    return int(deleted)


async def counts_by_kind(conn: Connection) -> list[asyncpg.Record]:
    """Runnable (the queue depth), running and dead jobs per kind."""
    return await conn.fetch(
        """
        SELECT kind,
               count(*) FILTER (WHERE state IN ('queued', 'failed') AND run_at <= now()) AS runnable,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'dead') AS dead
        FROM jobs
        WHERE state IN ('queued', 'failed', 'running', 'dead')
        GROUP BY kind
        """
    )
