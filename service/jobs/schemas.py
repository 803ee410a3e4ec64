"""Request and response shapes of /v1/jobs, and the jobs' vocabularies (states, attempt outcomes)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # an attempt failed; the next one runs at `run_at`
    DEAD = "dead"  # the last allowed attempt failed
    CANCELLED = "cancelled"


class AttemptStatus(enum.StrEnum):
    """How the child process reports an attempt (service/worker/pool.py sends these strings)."""

    OK = "ok"
    ERROR = "error"  # the job raised: retried after a backoff, until its attempts are spent
    PERMANENT = "permanent"  # no attempt can succeed (bad params, unknown kind): straight to dead


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended, as `job_attempts.outcome` records it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # raised, died, or could never succeed
    TIMEOUT = "timeout"  # killed past its hard limit
    RELEASED = "released"  # handed back unfinished at shutdown; not counted
    LOST = "lost"  # its worker stopped renewing the lease; reclaimed by another


class StopReason(enum.StrEnum):
    """Why the worker cancels a running attempt itself."""

    LEASE_LOST = "lease lost"  # another worker took the job over: its result could not be stored
    SHUTDOWN = "shutdown"  # past the shutdown grace: kill the child and release the job


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str = Field(min_length=1, max_length=100, examples=["cpu.burn"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"milliseconds": 200}])


class Job(BaseModel):
    id: UUID
    kind: str
    params: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    run_at: datetime = Field(description="When the job may run next (a retry waits for its backoff).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None = Field(description="The last attempt's error, if it failed.")
    request_id: str | None = Field(description="X-Request-ID of the request that created the job.")
