"""The worker's loop: claim runnable jobs, run each in a child process, record how it ended.

Three tasks share one event loop and one small asyncpg pool:
- the claim loop wakes on NOTIFY (or every poll interval, the fallback),
  claims as many jobs as there are free slots, and starts one task per job;
- the heartbeat renews the leases of running jobs every third of the lease,
  and kills the child of any job whose lease was taken over;
- upkeep, every poll interval, reclaims expired leases of other (dead)
  workers, samples the queue gauges, and prunes old finished jobs.

A result is stored only while this attempt's lease token holds, so a job that
ran twice (a frozen worker came back) stores one result. When PostgreSQL is
unreachable, the loop keeps retrying; running jobs finish and their outcome is
written once the database answers again, unless the lease ran out first (then
another worker runs the job again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from service import tracing
from service.config import WorkerSettings
from service.db import UNAVAILABLE_ERRORS, acquire
from service.jobs import repository
from service.jobs.kinds import KINDS, JobContext
from service.jobs.schemas import AttemptOutcome, AttemptStatus, JobState, StopReason
from service.logging import job_id_var, request_id_var
from service.worker import metrics
from service.worker.pool import ChildDied, JobTimedOut, Slot, SlotPool

logger = logging.getLogger("service.worker")
_T = TypeVar("_T")
PRUNE_EVERY_SECONDS = 60.0
# Errors that mean "PostgreSQL is away for now": retried, never fatal. Anything else
# (a missing table: migrations were not run) crashes the loop, and the process exits 1.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.InterfaceError)


def _trace_headers(claim: repository.Claim) -> dict[str, str]:
    headers = {"traceparent": claim.traceparent} if claim.traceparent else {}
    if claim.traceparent and claim.tracestate:
        headers["tracestate"] = claim.tracestate
    return headers


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the step is fixed, half random, so retries
    of jobs that failed together spread out but none retries almost at once."""
    step = min(cap, base * 2.0 ** (attempt - 1))
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not cryptography


@dataclass(frozen=True)
class Attempt:
    """What one run of a job produced, before anything is written."""

    status: AttemptStatus
    payload: Any  # the result (OK), or the error with the innermost frames of its traceback
    outcome: AttemptOutcome = AttemptOutcome.FAILED  # how job_attempts names a failure


@dataclass
class JobScope:
    """The state an attempt left its job in; the job's span reports it when the scope closes."""

    state: JobState | None = None  # None: abandoned (cancelled, lease lost, or not recorded)


@contextlib.contextmanager
def job_scope(claim: repository.Claim) -> Iterator[JobScope]:
    """The job's id and request id on every log line, and its span (when tracing is on) continuing
    the trace of the request that enqueued it."""
    request_id_var.set(claim.request_id)
    job_id_var.set(str(claim.id))
    scope = JobScope()
    if not tracing.enabled:
        yield scope
        return
    span, token = tracing.start_job_span(claim.kind, str(claim.id), claim.attempt, _trace_headers(claim))
    try:
        yield scope
    finally:
        tracing.end_job_span(span, token, scope.state.value if scope.state else None)


@dataclass
class Running:
    claim: repository.Claim
    task: asyncio.Task[None]
    stop_reason: StopReason | None = None  # set when the worker cancels the attempt itself


@dataclass
class Worker:
    settings: WorkerSettings
    pool: asyncpg.Pool
    slots: SlotPool
    name: str
    running: dict[UUID, Running] = field(default_factory=dict)
    stopping: bool = False
    started: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _backlog: bool = False
    _listener: asyncpg.Connection | None = None
    _last_prune: float = 0.0

    # --- the claim loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and start jobs until `stop()`; return once no new job will be claimed."""
        settings = self.settings
        next_upkeep = 0.0
        while not self.stopping:
            if time.monotonic() >= next_upkeep:
                await self._upkeep()
                next_upkeep = time.monotonic() + settings.worker_poll_interval_seconds
            free = self.slots.free
            # Cleared before the claim: a NOTIFY arriving during it makes the loop go round again.
            self._wake.clear()
            claimed: list[repository.Claim] = []
            if free:
                claimed = await self._db("claim", self._claim, free) or []
                for claim in claimed:
                    self._start(claim, self.slots.take())
            self._backlog = bool(free) and len(claimed) == free
            if self._backlog and self.slots.free:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_upkeep - time.monotonic())):
                    await self._wake.wait()

    async def _claim(self, conn: asyncpg.Connection, free: int) -> list[repository.Claim]:
        return await repository.claim(conn, self.name, free, self.settings.job_lease_seconds)

    def _start(self, claim: repository.Claim, slot: Slot) -> None:
        metrics.QUEUE_WAIT.labels(claim.kind).observe(max(0.0, (claim.claimed_at - claim.run_at).total_seconds()))
        task = asyncio.create_task(self._execute(claim, slot), name=f"job-{claim.id}")
        self.running[claim.id] = Running(claim, task)
        metrics.RUNNING.set(len(self.running))

    def wake(self) -> None:
        self._wake.set()

    # --- one job -------------------------------------------------------------------------

    async def _execute(self, claim: repository.Claim, slot: Slot) -> None:
        with job_scope(claim) as scope:
            scope.state = await self._execute_attempt(claim, slot)

    async def _execute_attempt(self, claim: repository.Claim, slot: Slot) -> JobState | None:
        """Run one attempt and record it; the job's new state, None if it was not recorded."""
        logger.info("job started", extra={"kind": claim.kind, "attempt": claim.attempt})
        started = time.perf_counter()
        state: JobState | None = None
        try:
            state = await self._record(claim, await self._run(claim, slot))
        except TRANSIENT_ERRORS as error:
            logger.error(
                "job outcome not recorded: the database stayed unreachable; it runs again once its lease expires",
                extra={"kind": claim.kind, "error": type(error).__name__},
            )
        except asyncio.CancelledError:
            entry = self.running.get(claim.id)
            shutting_down = entry is not None and entry.stop_reason is StopReason.SHUTDOWN
            if shutting_down and await self._db("release", repository.release, claim, self.name):
                metrics.JOBS_RELEASED.labels(claim.kind).inc()
                logger.info("job released at shutdown", extra={"kind": claim.kind})
            raise
        finally:
            self.slots.give_back(slot)
            self.running.pop(claim.id, None)
            metrics.RUNNING.set(len(self.running))
            if self._backlog:
                self._wake.set()  # a slot is free and jobs may be waiting
        elapsed = time.perf_counter() - started
        if state is not None:
            metrics.JOB_DURATION.labels(claim.kind, state).observe(elapsed)
            metrics.JOBS_PROCESSED.labels(claim.kind, state).inc()
            logger.info("job finished", extra={"kind": claim.kind, "outcome": state, "seconds": round(elapsed, 3)})
        return state

    def _limit_seconds(self, claim: repository.Claim) -> float:
        kind = KINDS.get(claim.kind)
        if kind is not None and kind.timeout_seconds is not None:
            return min(self.settings.job_timeout_seconds, kind.timeout_seconds)
        return self.settings.job_timeout_seconds

    async def _run(self, claim: repository.Claim, slot: Slot) -> Attempt:
        """Run the attempt in the slot's child; writes nothing."""
        if claim.kind not in KINDS:
            return Attempt(AttemptStatus.PERMANENT, f"unknown job kind {claim.kind!r}")
        context = JobContext(
            str(claim.id),
            claim.attempt,
            str(self.settings.database_url),
            claim.request_id,
            transaction_pooled=self.settings.transaction_pooled,
        )
        try:
            status, payload = await slot.run(claim.kind, claim.params, context, self._limit_seconds(claim))
        except JobTimedOut as error:
            metrics.JOB_TIMEOUTS.labels(claim.kind).inc()
            logger.warning("job timed out", extra={"kind": claim.kind, "child_pid": error.pid})
            return Attempt(AttemptStatus.ERROR, str(error), AttemptOutcome.TIMEOUT)
        except ChildDied as error:
            return Attempt(AttemptStatus.ERROR, str(error))
        return Attempt(AttemptStatus(status), payload)

    async def _record(self, claim: repository.Claim, attempt: Attempt) -> JobState | None:
        """Store the attempt's end while its lease holds; the job's new state, None if the lease was lost."""
        state: JobState | None
        if attempt.status is AttemptStatus.OK:
            stored = await self._write("complete", repository.complete, claim, self.name, attempt.payload)
            state = JobState.SUCCEEDED if stored else None
        else:
            retry_in = None  # a permanent failure: no attempt can succeed, straight to dead
            if attempt.status is AttemptStatus.ERROR:
                retry_in = retry_delay(
                    claim.attempt, self.settings.job_retry_base_seconds, self.settings.job_retry_max_seconds
                )
            detail = str(attempt.payload)
            summary = detail.strip().splitlines()[-1][:500]  # the exception line, without the traceback
            logger.warning("job attempt failed", extra={"kind": claim.kind, "error": summary})
            state = await self._write(
                "fail",
                repository.fail,
                claim,
                self.name,
                outcome=attempt.outcome,
                error=summary,
                detail=detail,
                retry_in_seconds=retry_in,
            )
        if state is None:
            self._lost(claim)
        return state

    def _lost(self, claim: repository.Claim) -> None:
        metrics.LEASES_LOST.labels(claim.kind).inc()
        logger.warning("job outcome discarded: another worker took the job over", extra={"kind": claim.kind})

    async def _write(self, operation: str, write: Callable[..., Awaitable[_T]], *args: object, **kwargs: object) -> _T:
        """Write an attempt's outcome, retrying while the database is unreachable and the lease
        may still hold; past that, another worker re-runs the job, so giving up loses nothing."""
        deadline = time.monotonic() + self.settings.job_lease_seconds
        delay = 0.1
        while True:
            try:
                async with acquire(self.pool) as conn:
                    return await write(conn, *args, **kwargs)
            except TRANSIENT_ERRORS as error:
                metrics.DB_ERRORS.labels(operation).inc()
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("cannot record job outcome yet; retrying", extra={"error": type(error).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # --- heartbeat, upkeep ---------------------------------------------------------------

    async def heartbeat(self) -> None:
        interval = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            leases = [(job_id, entry.claim.lease_token) for job_id, entry in self.running.items()]
            if not leases:
                continue  # idle: no connection borrowed, no statement sent
            held = await self._db("renew", self._renew, leases)
            if held is None:
                continue  # the database is unreachable: keep running; completion decides
            for job_id, _ in leases:
                entry = self.running.get(job_id)
                if job_id not in held and entry is not None and entry.stop_reason is None:
                    entry.stop_reason = StopReason.LEASE_LOST
                    self._lost(entry.claim)
                    entry.task.cancel()  # kills the child: its result could not be stored

    async def _renew(self, conn: asyncpg.Connection, leases: list[tuple[UUID, UUID]]) -> set[UUID]:
        return await repository.renew(conn, leases, self.settings.job_lease_seconds)

    async def _upkeep(self) -> None:
        await self._ensure_listener()
        for reclaimed in await self._db("reclaim", repository.reclaim_expired) or []:
            metrics.LEASES_RECLAIMED.labels(reclaimed.kind).inc()
            logger.warning(
                "reclaimed a job from a lost worker", extra={"kind": reclaimed.kind, "state": reclaimed.state}
            )
        counts = await self._db("count", repository.counts_by_kind)
        if counts is not None:
            seen = {row["kind"]: row for row in counts}
            for kind in {*KINDS, *seen}:
                row = seen.get(kind)
                metrics.QUEUE_DEPTH.labels(kind).set(row["runnable"] if row else 0)
                metrics.JOBS_DEAD.labels(kind).set(row["dead"] if row else 0)
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            pruned = await self._db("prune", repository.prune, self.settings.job_retention_hours)
            if pruned:
                logger.info("pruned finished jobs", extra={"count": pruned})

    async def _ensure_listener(self) -> None:
        """LISTEN on a dedicated connection; reconnect after PostgreSQL comes back.

        LISTEN needs a session: behind a transaction-mode pooler it goes to DATABASE_DIRECT_URL,
        and without one there is no listener (the worker polls every WORKER_POLL_INTERVAL_SECONDS;
        `service/worker/__main__.py` says so at startup).
        """
        url = self.settings.session_database_url
        if url is None or (self._listener is not None and not self._listener.is_closed()):
            return
        try:
            conn = await asyncpg.connect(
                url,
                timeout=self.settings.db_connect_timeout_seconds,
                server_settings={"application_name": f"{self.settings.service_name}-listen"},
            )
            await conn.add_listener(repository.CHANNEL, lambda *_: self._wake.set())
        except TRANSIENT_ERRORS as error:
            metrics.DB_ERRORS.labels("listen").inc()
            logger.warning("cannot LISTEN for new jobs; polling", extra={"error": type(error).__name__})
            return
        self._listener = conn
        self._wake.set()  # jobs may have arrived while nobody listened

    async def _db(self, operation: str, call: Callable[..., Awaitable[_T]], *args: object) -> _T | None:
        """One queue statement on a pooled connection; None (logged, counted) if the database is unavailable."""
        try:
            async with acquire(self.pool, self.settings.db_pool_acquire_timeout_seconds) as conn:
                return await call(conn, *args)
        except TRANSIENT_ERRORS as error:
            metrics.DB_ERRORS.labels(operation).inc()
            logger.warning("queue statement failed", extra={"operation": operation, "error": type(error).__name__})
            return None

    # --- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming (the claim loop returns); running jobs carry on."""
        self.stopping = True
        self._wake.set()

    async def drain(self, grace_seconds: float) -> None:
        """Let running jobs finish within `grace_seconds`; kill and release the rest."""
        tasks = [entry.task for entry in self.running.values()]
        if tasks:
            logger.info("waiting for running jobs", extra={"jobs": len(tasks), "grace_seconds": grace_seconds})
            await asyncio.wait(tasks, timeout=grace_seconds)
        leftovers = list(self.running.values())
        for entry in leftovers:
            entry.stop_reason = StopReason.SHUTDOWN
            entry.task.cancel()
        if leftovers:
            await asyncio.wait([entry.task for entry in leftovers])
        if self._listener is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._listener.close(timeout=2)
