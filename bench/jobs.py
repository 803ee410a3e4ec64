"""Worker-tier benchmark: queue latency and throughput, and what CPU jobs do to API latency.

1. Enqueue -> start latency of no-op jobs (`cpu.burn` of 0 ms), one at a time
   into an idle worker: with LISTEN/NOTIFY (the real enqueue) and, side by
   side, with the NOTIFY left out so only the poll fallback finds them.
2. Throughput: 3,000 no-op jobs enqueued at once, one worker with 2 slots.
3. p99 of GET /v1/items/{id} (wrk, 4 connections each pausing 4 ms between
   requests: about the same offered load whatever shares the machine; API
   pinned to cpu 1) in three
   situations, interleaved: idle; while a worker (pinned to cpu 0, one slot, as
   a one-CPU worker pod) runs 200 ms `cpu.burn` jobs back to back; and the
   anti-example, the same 200 ms job run inline in the API process
   (bench/peers/inline_jobs.py) back to back.

    make bench     # or: uv run python bench/jobs.py [--rounds 2 --seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from harness import LOAD_CPU, RESULTS, ROOT, Backends, require_tools, seed, server, servers, throwaway_backends, wrk

from service.jobs import repository

LATENCY_TARGET_MS = 25.0
THROUGHPUT_TARGET = 300.0
P99_RATIO_TARGET = 1.5
SCRIPT = ROOT / "bench" / "paced_item.lua"
CONNECTIONS = 4
PAUSE_MS = 4  # per connection between requests: about 1,000 req/s offered, a third of one core's capacity


@contextmanager
def worker(backends: Backends, *, cpus: str | None, **env: str) -> Iterator[str]:
    """A `python -m service.worker`, optionally pinned; yields its metrics URL once ready."""
    port = servers.free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)  # noqa: SIM115
    prefix = ["taskset", "-c", cpus] if cpus else []
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "service.worker"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": backends.database_url,
            "METRICS_PORT": str(port),
            "LOG_LEVEL": "WARNING",
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        os.unlink(log.name)


async def _enqueue(conn: asyncpg.Connection, milliseconds: int) -> None:
    await repository.enqueue(
        conn, repository.NewJob("cpu.burn", {"milliseconds": milliseconds}, 5, "bench", None, None, None, None, None)
    )


async def _wait_all_finished(conn: asyncpg.Connection, within: float) -> None:
    deadline = time.monotonic() + within
    while await conn.fetchval("SELECT count(*) FROM jobs WHERE state <> 'succeeded'"):
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not finish")
        await asyncio.sleep(0.05)


async def _start_latencies_ms(conn: asyncpg.Connection) -> list[float]:
    rows = await conn.fetch(
        """SELECT extract(epoch FROM a.started_at - j.created_at) * 1000 AS ms
           FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.outcome = 'succeeded'"""
    )
    return [float(row["ms"]) for row in rows]


async def queue_numbers(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE jobs, job_attempts")
        for _ in range(200):  # the real enqueue: INSERT + NOTIFY
            await _enqueue(conn, 0)
            await asyncio.sleep(0.01)
        await _wait_all_finished(conn, 60)
        notify = await _start_latencies_ms(conn)

        await conn.execute("TRUNCATE jobs, job_attempts")
        for _ in range(20):  # INSERT only: found by the poll (WORKER_POLL_INTERVAL_SECONDS, 2 s)
            await conn.execute(
                "INSERT INTO jobs (kind, params, max_attempts) VALUES ('cpu.burn', '{\"milliseconds\": 0}', 5)"
            )
            await asyncio.sleep(0.25)
        await _wait_all_finished(conn, 60)
        poll = await _start_latencies_ms(conn)

        await conn.execute("TRUNCATE jobs, job_attempts")
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO jobs (kind, params, max_attempts)
                   SELECT 'cpu.burn', '{"milliseconds": 0}', 5 FROM generate_series(1, 3000)"""
            )
            await conn.execute("SELECT pg_notify('jobs', 'bench')")
        await _wait_all_finished(conn, 120)
        span = await conn.fetchval(
            """SELECT extract(epoch FROM max(a.finished_at) - min(j.created_at))
               FROM jobs j JOIN job_attempts a ON a.job_id = j.id"""
        )
    finally:
        await conn.close()
    return {
        "notify_start_ms": {
            "median": statistics.median(notify),
            "p90": statistics.quantiles(notify, n=10)[-1],
            "max": max(notify),
        },
        "poll_only_start_ms": {"median": statistics.median(poll), "max": max(poll)},
        "throughput_jobs_per_second": 3000 / float(span),
    }


def _api_env(backends: Backends, port: int) -> dict[str, str]:
    return {
        **backends.server_env(port),
        "ENVIRONMENT": "production",
        "SECRET_KEY": "benchmark-secret-key-0123456789abcdef0123",
        "RATE_LIMIT_ENABLED": "false",
        "METRICS_PORT": str(servers.free_port()),
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "MAX_REQUESTS": "0",
    }


class InlineLoad:
    """Posts the inline 200 ms job back to back from a thread until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                http.post(f"{self.url}/v1/inline-jobs").raise_for_status()
                self.count += 1

    def __enter__(self) -> InlineLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


async def _keep_queue_full(database_url: str, jobs: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE jobs, job_attempts")
        for _ in range(jobs):
            await _enqueue(conn, 200)
    finally:
        await conn.close()


async def _drop_queue(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        done = int(await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'succeeded'"))
        await conn.execute("DELETE FROM jobs WHERE state IN ('queued', 'failed')")
        return done
    finally:
        await conn.close()


def latency_numbers(backends: Backends, rounds: int, seconds: int) -> dict[str, Any]:
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]
    wrk_env = {"BENCH_MAX_ID": "100", "BENCH_DELAY_MS": str(PAUSE_MS)}
    p99: dict[str, list[float]] = {"idle": [], "worker": [], "inline": []}
    rps: dict[str, list[float]] = {"idle": [], "worker": [], "inline": []}
    jobs_done = {"worker": 0, "inline": 0}
    for _ in range(rounds):
        with server(gunicorn, _api_env(backends, port), port):
            result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=SCRIPT, env=wrk_env)
            p99["idle"].append(result.p99_ms)
            rps["idle"].append(result.requests_per_second)
            asyncio.run(_keep_queue_full(backends.database_url, seconds * 5 + 20))
            with worker(backends, cpus=LOAD_CPU, WORKER_CONCURRENCY="1"):
                time.sleep(1)  # the first job is running
                result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=SCRIPT, env=wrk_env)
                jobs_done["worker"] += asyncio.run(_drop_queue(backends.database_url))
            p99["worker"].append(result.p99_ms)
            rps["worker"].append(result.requests_per_second)
        inline = [*gunicorn, "bench.peers.inline_jobs:create_app()"]
        with server(inline, _api_env(backends, port), port), InlineLoad(url) as load:
            time.sleep(0.5)
            result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=SCRIPT, env=wrk_env)
            jobs_done["inline"] += load.count
        p99["inline"].append(result.p99_ms)
        rps["inline"].append(result.requests_per_second)
    return {
        "p99_ms": {name: statistics.median(values) for name, values in p99.items()},
        "requests_per_second": {name: statistics.median(values) for name, values in rps.items()},
        "jobs_of_200ms_completed": jobs_done,
    }


def report(queue: dict[str, Any], latency: dict[str, Any], rounds: int, seconds: int) -> bool:
    p99 = latency["p99_ms"]
    checks = [
        (
            "enqueue -> start, median, LISTEN/NOTIFY (ms)",
            queue["notify_start_ms"]["median"],
            f"< {LATENCY_TARGET_MS:g}",
            queue["notify_start_ms"]["median"] < LATENCY_TARGET_MS,
        ),
        (
            "no-op job throughput, 1 worker x 2 slots (jobs/s)",
            queue["throughput_jobs_per_second"],
            f">= {THROUGHPUT_TARGET:g}",
            queue["throughput_jobs_per_second"] >= THROUGHPUT_TARGET,
        ),
        (
            "GET item p99 with 200 ms jobs on the worker / idle",
            p99["worker"] / p99["idle"],
            f"<= {P99_RATIO_TARGET:g}x",
            p99["worker"] / p99["idle"] <= P99_RATIO_TARGET,
        ),
    ]
    lines = [
        f"# Worker tier ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"2 cores. Queue: one idle worker, 2 slots. API latency: API pinned to cpu 1; wrk ({CONNECTIONS} connections, "
        f"{PAUSE_MS} ms pause each, 100 hot ids) and the worker (1 slot) on cpu 0; "
        f"median of {rounds} interleaved rounds of {seconds} s.",
        "",
        "| target | measured | wanted | met |",
        "|---|---:|---|---|",
        *(f"| {name} | {value:,.2f} | {wanted} | {'yes' if ok else '**no**'} |" for name, value, wanted, ok in checks),
        "",
        "| enqueue -> start (ms) | median | p90 | max |",
        "|---|---:|---:|---:|",
        "| INSERT + NOTIFY (the real enqueue) | {median:.1f} | {p90:.1f} | {max:.1f} |".format(
            **queue["notify_start_ms"]
        ),
        "| INSERT only (poll fallback, 2 s interval) | {:.1f} | | {:.1f} |".format(
            queue["poll_only_start_ms"]["median"], queue["poll_only_start_ms"]["max"]
        ),
        "",
        "| GET /v1/items/{id} while... | p99 ms | req/s | 200 ms jobs done |",
        "|---|---:|---:|---:|",
        f"| nothing else runs | {p99['idle']:.2f} | {latency['requests_per_second']['idle']:,.0f} | |",
        f"| the worker runs jobs back to back | {p99['worker']:.2f} | "
        f"{latency['requests_per_second']['worker']:,.0f} | {latency['jobs_of_200ms_completed']['worker']} |",
        f"| the same jobs run inline in the API (anti-example) | {p99['inline']:.2f} | "
        f"{latency['requests_per_second']['inline']:,.0f} | {latency['jobs_of_200ms_completed']['inline']} |",
        "",
        f"Inline / idle p99: {p99['inline'] / p99['idle']:.1f}x; "
        f"worker / idle p99: {p99['worker'] / p99['idle']:.2f}x.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jobs.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "jobs.json").write_text(json.dumps({"queue": queue, "api_latency": latency}, indent=2) + "\n")
    print("\n".join(lines))
    return all(ok for *_, ok in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    require_tools()
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script drives load: keep it off the API's core
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        with worker(backends, cpus=None, WORKER_CONCURRENCY="2"):
            queue = asyncio.run(queue_numbers(backends.database_url))
        latency = latency_numbers(backends, args.rounds, args.seconds)
    return 0 if report(queue, latency, args.rounds, args.seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
