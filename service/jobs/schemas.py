"""Request and response shapes of /v1/jobs."""

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
