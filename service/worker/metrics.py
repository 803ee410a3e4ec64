"""The worker's Prometheus metrics (names: docs/architecture.md, "Metrics"), served on its METRICS_PORT.

The gauges sampled from the jobs table (depth, dead) read the same on every
worker: aggregate them with `max`, not `sum`. Counters and histograms are per
worker: `sum` them.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from service.jobs.kinds import KINDS
from service.jobs.schemas import JobState

# The `outcome` label: the state an attempt left its job in (the runner records exactly these).
OUTCOMES: Final = (JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD)

QUEUE_DEPTH = Gauge("job_queue_depth", "Runnable jobs not yet claimed (sampled from the jobs table).", ["kind"])
JOBS_DEAD = Gauge("jobs_dead", "Jobs in state dead: every attempt failed (sampled from the jobs table).", ["kind"])
QUEUE_WAIT = Histogram(
    "job_queue_wait_seconds",
    "From when a job became runnable (created, or its retry came due) to its claim.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "One attempt's run time, by how it ended (succeeded, failed and to be retried, dead).",
    ["kind", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
JOBS_PROCESSED = Counter("jobs_processed_total", "Attempts finished, by kind and outcome.", ["kind", "outcome"])
JOB_TIMEOUTS = Counter("job_timeouts_total", "Attempts killed for exceeding their timeout.", ["kind"])
LEASES_RECLAIMED = Counter(
    "job_leases_reclaimed_total", "Jobs taken back from a worker that stopped renewing its lease.", ["kind"]
)
LEASES_LOST = Counter(
    "job_leases_lost_total", "Attempts this worker abandoned because another worker had taken the job over.", ["kind"]
)
JOBS_RELEASED = Counter("jobs_released_total", "Jobs handed back unfinished at shutdown.", ["kind"])
RUNNING = Gauge("worker_jobs_running", "Jobs this worker is running now.")
SLOTS = Gauge("worker_slots", "Child processes this worker runs jobs in (its maximum concurrency).")
DB_ERRORS = Counter("worker_database_errors_total", "Failed queue statements, by operation.", ["operation"])
# The `operation` label: every queue statement the runner names (service/worker/runner.py).
DB_OPERATIONS: Final = ("claim", "release", "complete", "fail", "renew", "reclaim", "count", "prune", "listen")


def initialise() -> None:
    """Create every labelled series at zero, so the first failure of a kind is an increase.

    `rate()` over a series that first appears at 1 is 0: a worker's first dead job, lost
    lease or failed statement would otherwise be invisible to the rules (and sparse ones
    forever). Every kind x outcome, every counter by kind, every queue operation.
    """
    for kind in KINDS:
        QUEUE_DEPTH.labels(kind)
        JOBS_DEAD.labels(kind)
        QUEUE_WAIT.labels(kind)
        JOB_TIMEOUTS.labels(kind)
        LEASES_RECLAIMED.labels(kind)
        LEASES_LOST.labels(kind)
        JOBS_RELEASED.labels(kind)
        for outcome in OUTCOMES:
            JOBS_PROCESSED.labels(kind, outcome)
            JOB_DURATION.labels(kind, outcome)
    for operation in DB_OPERATIONS:
        DB_ERRORS.labels(operation)
