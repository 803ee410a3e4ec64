"""Scale benchmark: do the list and the job queue stay fast when the tables are large?

1. Keyset pagination on a 1,000,000-row `items` table: GET /v1/items?limit=100
   for page 1 and for page 10,000 (a signed cursor for id 999,900) through the
   real API (gunicorn, production settings, wrk with one connection, p50), and
   the same two pages as SQL. Target: page 10,000 / page 1 <= 1.2x. The
   anti-example beside it: LIMIT 100 OFFSET 999,900, which reads and discards
   every row before the page.
2. Job claim latency: the worker's claim statement (service/jobs/repository.py)
   taking one runnable job, with 1,000 finished jobs in the table, then with
   1,000,000. Target: <= 2x. Finished jobs stay out of the claim's partial
   index (`jobs_runnable`), so its cost should not grow with them; the pruner
   (JOB_RETENTION_HOURS) keeps the heap from growing without end.

Both measure medians of many repetitions in one run, side by side; ratios are
the claims (this machine is shared and noisy).

    make bench     # or: uv run python bench/scale.py [--rows 1000000 --repeat 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from harness import RESULTS, Backends, require_tools, seed, server, servers, throwaway_backends, wrk

from service.jobs import repository
from service.pagination import encode_cursor

PAGE = 100
KEYSET_TARGET = 1.2
CLAIM_TARGET = 2.0
SECRET_KEY = "benchmark-secret-key-0123456789abcdef0123"


async def _median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    for _ in range(max(3, repeat // 20)):  # warm the plan and the buffers
        await call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def sql_pages(database_url: str, rows: int, repeat: int) -> dict[str, float]:
    """Median milliseconds of the four page queries, interleaved per repetition block."""
    deep = rows - PAGE
    conn = await asyncpg.connect(database_url)
    try:
        keyset = "SELECT id, sku, name, category, price_cents, stock FROM items WHERE id > $1 ORDER BY id LIMIT $2"
        offset = "SELECT id, sku, name, category, price_cents, stock FROM items ORDER BY id LIMIT $1 OFFSET $2"
        offset_repeat = max(5, repeat // 10)  # the deep OFFSET takes long enough: fewer repetitions
        return {
            "keyset first page": await _median_ms(lambda: conn.fetch(keyset, 0, PAGE), repeat),
            "keyset deepest page": await _median_ms(lambda: conn.fetch(keyset, deep, PAGE), repeat),
            "OFFSET first page": await _median_ms(lambda: conn.fetch(offset, PAGE, 0), offset_repeat),
            "OFFSET deepest page": await _median_ms(lambda: conn.fetch(offset, PAGE, deep), offset_repeat),
        }
    finally:
        await conn.close()


def http_pages(backends: Backends, rows: int, seconds: int) -> dict[str, float]:
    """p50 milliseconds of GET /v1/items?limit=100 for page 1 and page 10,000, through the real API."""
    port = servers.free_port()
    env = backends.server_env(port) | {
        "ENVIRONMENT": "production",
        "SECRET_KEY": SECRET_KEY,
        "RATE_LIMIT_READS": "1000000000/hour",
        "METRICS_PORT": str(servers.free_port()),
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "MAX_REQUESTS": "0",
    }
    cursor = encode_cursor(SECRET_KEY.encode(), rows - PAGE)
    base = f"http://127.0.0.1:{port}/v1/items?limit={PAGE}"
    with server([sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"], env, port):
        results: dict[str, list[float]] = {"API first page": [], "API deepest page": []}
        for _ in range(2):  # interleaved rounds
            results["API first page"].append(wrk(base, seconds=seconds, connections=1).p50_ms)
            results["API deepest page"].append(wrk(f"{base}&cursor={cursor}", seconds=seconds, connections=1).p50_ms)
    return {name: statistics.median(values) for name, values in results.items()}


async def _finished_jobs(conn: asyncpg.Connection, count: int) -> None:
    await conn.execute(
        """INSERT INTO jobs (kind, params, state, attempts, max_attempts, result, started_at, finished_at)
           SELECT 'cpu.burn', '{"milliseconds": 0}', 'succeeded', 1, 3, '{}', now(), now()
           FROM generate_series(1, $1)""",
        count,
    )
    await conn.execute("VACUUM ANALYZE jobs")


async def claim_latency(database_url: str, repeat: int) -> float:
    """Median milliseconds of one claim (enqueue one job, claim it, finish it: only the claim is timed)."""
    conn = await asyncpg.connect(database_url)
    try:
        times = []
        for n in range(repeat + 10):
            await conn.execute(
                "INSERT INTO jobs (kind, params, max_attempts) VALUES ('cpu.burn', '{\"milliseconds\": 0}', 3)"
            )
            started = time.perf_counter()
            claims = await repository.claim(conn, "bench", 1, 30.0)
            elapsed = (time.perf_counter() - started) * 1000
            assert len(claims) == 1
            await repository.complete(conn, claims[0], "bench", {})
            if n >= 10:  # the first few warm the plan
                times.append(elapsed)
        return statistics.median(times)
    finally:
        await conn.close()


async def claims(database_url: str, finished: int, repeat: int) -> dict[str, float]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE jobs CASCADE")
        await _finished_jobs(conn, 1000)
        small = await claim_latency(database_url, repeat)
        await _finished_jobs(conn, finished - 1000)
        large = await claim_latency(database_url, repeat)
    finally:
        await conn.close()
    return {"claim, 1,000 finished jobs": small, f"claim, {finished:,} finished jobs": large}


def write(summary: dict[str, Any]) -> None:
    (RESULTS / "scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    m = summary["milliseconds"]
    r = summary["ratios"]
    large = m[f"claim, {summary['finished_jobs']:,} finished jobs"]
    lines = [
        "# Scale: deep pages and a large job table",
        "",
        f"Run {summary['date']} with `uv run python bench/scale.py --rows {summary['rows']} "
        f"--repeat {summary['repeat']}` (medians in one run; ratios are the claims).",
        "",
        "| scenario | first page / 1,000 jobs | deepest page / many jobs | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| keyset list through the API (p50, wrk 1 connection) | {m['API first page']:.2f} ms "
        f"| {m['API deepest page']:.2f} ms | {r['keyset_api']:.2f}x | <= {KEYSET_TARGET}x "
        f"{'met' if r['keyset_api'] <= KEYSET_TARGET else 'MISSED'} |",
        f"| keyset list, SQL | {m['keyset first page']:.3f} ms | {m['keyset deepest page']:.3f} ms "
        f"| {r['keyset_sql']:.2f}x | <= {KEYSET_TARGET}x {'met' if r['keyset_sql'] <= KEYSET_TARGET else 'MISSED'} |",
        f"| OFFSET list, SQL (the anti-example) | {m['OFFSET first page']:.3f} ms | {m['OFFSET deepest page']:.1f} ms "
        f"| {r['offset_sql']:.0f}x | none: it grows with the page number |",
        f"| job claim, 1,000 vs {summary['finished_jobs']:,} finished jobs | {m['claim, 1,000 finished jobs']:.3f} ms "
        f"| {large:.3f} ms | {r['claim']:.2f}x "
        f"| <= {CLAIM_TARGET}x {'met' if r['claim'] <= CLAIM_TARGET else 'MISSED'} |",
        "",
    ]
    (RESULTS / "scale.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="items, and finished jobs (1,000,000)")
    parser.add_argument("--repeat", type=int, default=300, help="repetitions per SQL measurement (300)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk seconds per API page (5)")
    arguments = parser.parse_args()
    if arguments.rows < 10 * PAGE or arguments.repeat < 10:
        parser.error("--rows must be at least 1,000 and --repeat at least 10")
    require_tools()
    with throwaway_backends() as backends:
        print(f"scale: seeding {arguments.rows:,} items", flush=True)
        seed(backends.database_url, arguments.rows)
        milliseconds = asyncio.run(sql_pages(backends.database_url, arguments.rows, arguments.repeat))
        milliseconds |= http_pages(backends, arguments.rows, arguments.seconds)
        print(f"scale: {arguments.rows:,} finished jobs", flush=True)
        milliseconds |= asyncio.run(claims(backends.database_url, arguments.rows, arguments.repeat))
    large = f"claim, {arguments.rows:,} finished jobs"
    ratios = {
        "keyset_api": milliseconds["API deepest page"] / milliseconds["API first page"],
        "keyset_sql": milliseconds["keyset deepest page"] / milliseconds["keyset first page"],
        "offset_sql": milliseconds["OFFSET deepest page"] / milliseconds["OFFSET first page"],
        "claim": milliseconds[large] / milliseconds["claim, 1,000 finished jobs"],
    }
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "rows": arguments.rows,
        "finished_jobs": arguments.rows,
        "repeat": arguments.repeat,
        "milliseconds": milliseconds,
        "ratios": ratios,
        "targets_met": ratios["keyset_api"] <= KEYSET_TARGET
        and ratios["keyset_sql"] <= KEYSET_TARGET
        and ratios["claim"] <= CLAIM_TARGET,
    }
    write(summary)
    print((RESULTS / "scale.md").read_text())
    return 0 if summary["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
