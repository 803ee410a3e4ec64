"""`python -m service.worker`: the worker tier's process.

Start: settings (exit with one line per bad variable), logging, the probe and
metrics port, a PostgreSQL pool, one child process per slot; then claim jobs.

SIGTERM or SIGINT: `/readyz` turns 503, no new job is claimed, running jobs get
WORKER_SHUTDOWN_GRACE_SECONDS to finish; the rest are killed and released
(their attempt is not counted) so another worker picks them up at once. A
second signal skips the wait. Exit 0 once everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import asyncpg

from service import tracing
from service.config import WorkerSettings, load_worker_settings, worker_pool_max_size
from service.db import create_pool
from service.logging import configure_logging
from service.metrics import instrument_pool, watch_event_loop
from service.worker import metrics
from service.worker.http import ProbeServer
from service.worker.pool import slot_pool
from service.worker.runner import Worker

logger = logging.getLogger("service.worker")


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, lowered by a cgroup v2 CPU quota (a pod's CPU limit)."""
    cpus = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = (cgroup_root / "cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cpus)


async def _readiness(worker: Worker, pool: asyncpg.Pool, within_seconds: float) -> tuple[int, dict[str, str]]:
    if worker.stopping:
        return 503, {"status": "draining"}
    try:
        await pool.fetchval("SELECT 1", timeout=within_seconds)
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"; the body names it
        return 503, {"status": "unavailable", "postgres": f"error: {type(error).__name__}"}
    return 200, {"status": "ok", "postgres": "ok"}


async def _wind_down(worker: Worker, stop_requested: asyncio.Event, grace_seconds: float, signals: int) -> None:
    """Running jobs get `grace_seconds` (cut short by another signal); the rest are released."""
    stop_requested.clear()
    if signals >= 2:
        await worker.drain(0)
        return
    second = asyncio.create_task(stop_requested.wait())
    drain = asyncio.create_task(worker.drain(grace_seconds))
    await asyncio.wait([drain, second], return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        logger.info("second signal: not waiting for running jobs")
        await worker.drain(0)
        await drain
    second.cancel()


def _probes(
    worker: Worker, pool: asyncpg.Pool, within_seconds: float, claim_loop: Callable[[], asyncio.Task[None] | None]
) -> ProbeServer:
    """/livez: the claim loop has not crashed; /readyz: PostgreSQL answers and not draining; /startupz: started."""

    async def livez() -> tuple[int, dict[str, str]]:
        task = claim_loop()
        crashed = task is not None and task.done() and not worker.stopping
        return (503, {"status": "claim loop stopped"}) if crashed else (200, {"status": "ok"})

    async def readyz() -> tuple[int, dict[str, str]]:
        return await _readiness(worker, pool, within_seconds)

    async def startupz() -> tuple[int, dict[str, str]]:
        return (200, {"status": "ok"}) if worker.started else (503, {"status": "starting"})

    return ProbeServer({"/livez": livez, "/readyz": readyz, "/startupz": startupz})


async def run(settings: WorkerSettings) -> None:
    slots = settings.worker_concurrency or available_cpus()
    name = f"{socket.gethostname()}:{os.getpid()}"
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    metrics.initialise()
    metrics.SLOTS.set(slots)
    claim_loop: asyncio.Task[None] | None = None
    async with contextlib.AsyncExitStack() as stack:
        max_size = settings.db_pool_max_size or worker_pool_max_size(slots)
        pool = await create_pool(settings, min_size=min(settings.db_pool_min_size, max_size), max_size=max_size)
        stack.push_async_callback(pool.close)
        instrument_pool(pool)
        # The loop renews leases and answers probes: lag here costs leases (children run at nice +10).
        lag_watch = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        stack.callback(lag_watch.cancel)
        job_slots = stack.enter_context(slot_pool(slots, settings.log_level.value))
        worker = Worker(settings, pool, job_slots, name)

        if settings.metrics_port:
            probes = _probes(worker, pool, settings.db_connect_timeout_seconds, lambda: claim_loop)
            server = await probes.serve("0.0.0.0", settings.metrics_port)  # noqa: S104 - a pod listens on all interfaces
            stack.callback(server.close)
        heartbeat = asyncio.create_task(worker.heartbeat(), name="heartbeat")
        claim_loop = asyncio.create_task(worker.run(), name="claim-loop")
        worker.started = True
        logger.info("worker started", extra={"worker": name, "slots": slots})
        if settings.session_database_url is None:
            logger.warning(
                "DATABASE_POOL_MODE=transaction without DATABASE_DIRECT_URL: no LISTEN for new jobs (it needs a "
                "session); polling every WORKER_POLL_INTERVAL_SECONDS instead",
                extra={"poll_seconds": settings.worker_poll_interval_seconds},
            )
        stopped = asyncio.create_task(stop_requested.wait())
        await asyncio.wait([stopped, claim_loop], return_when=asyncio.FIRST_COMPLETED)
        crash = claim_loop.exception() if claim_loop.done() else None
        if crash is not None:
            logger.error("claim loop crashed", exc_info=crash)
        logger.info("worker stopping", extra={"running": len(worker.running)})
        worker.stop()
        await asyncio.wait([claim_loop])
        await _wind_down(worker, stop_requested, settings.worker_shutdown_grace_seconds, signals)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        stopped.cancel()
    logger.info("worker stopped")
    if crash is not None:
        raise SystemExit(1)


def main() -> None:
    settings = load_worker_settings()
    configure_logging(settings.log_level.value)
    traced = tracing.configure(settings.service_name)
    try:
        asyncio.run(run(settings))
    finally:
        if traced:
            tracing.shutdown()  # flush the last spans


if __name__ == "__main__":
    main()
