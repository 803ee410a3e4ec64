-- The job queue. PostgreSQL is its system of record: a job exists once its
-- INSERT commits, whatever happens to Redis or to the worker that runs it.
--
-- States: queued -> running -> succeeded
--                           -> failed (an attempt failed; retried at run_at) -> running ...
--                           -> dead (the last allowed attempt failed; kept, visible, alerted on)
--         queued | failed   -> cancelled (DELETE /v1/jobs/{id})
CREATE TABLE jobs (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind             text        NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 100),
    params           jsonb       NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                                 CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
    -- When the job may run next: now for a new job, later for a retry after backoff.
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- The claim: a fresh token per attempt, so a worker whose lease was taken over
    -- can neither renew it nor store a result.
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker           text,
    -- Who asked, and how to find the request that did: logs and traces join on these.
    created_by       text,
    idempotency_key  text        CHECK (char_length(idempotency_key) BETWEEN 1 AND 200),
    request_hash     text,
    request_id       text,
    traceparent      text,
    tracestate       text,
    result           jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- A retried POST with the same Idempotency-Key (per API key) finds the first job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- What the claim scans: runnable jobs, oldest first.
CREATE INDEX jobs_runnable ON jobs (run_at, id) WHERE state IN ('queued', 'failed');
-- What the reaper scans: leases that may have expired.
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';
-- What the pruner scans.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');

-- One row per attempt: who ran it, for how long, and how it ended. The history an
-- operator reads when a job misbehaves, and the proof that a job's result was
-- stored once: at most one succeeded attempt per job, enforced here.
CREATE TABLE job_attempts (
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL CHECK (attempt >= 1),
    worker      text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'timeout', 'lost', 'released')),
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, attempt, outcome)
);
CREATE UNIQUE INDEX job_attempts_one_success ON job_attempts (job_id) WHERE outcome = 'succeeded';
