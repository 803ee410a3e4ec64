"""The API and the worker as processes, through a real PgBouncer in transaction mode.

The worker claims, renews leases (heartbeat), completes and reaps through the
pooler; with DATABASE_DIRECT_URL it is woken by LISTEN on the direct
connection, without it it polls and says so. The API process enqueues (with
NOTIFY through the pooler) and reads the results.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import servers  # deploy/local (tests/fixtures/__init__.py puts it on sys.path)

from tests.fixtures.backends import Backends, pooled_url, start_pgbouncer
from tests.fixtures.items import seed
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess, api_env, lines_where, worker_env

pytestmark = pytest.mark.e2e

# Only through PgBouncer: tests/e2e/test_worker.py runs the worker directly.
DATABASE_ROUTES = ["pgbouncer"]


async def wait_until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def post_jobs(api: ApiProcess, jobs: list[dict[str, Any]]) -> list[str]:
    async with httpx.AsyncClient(base_url=api.url, headers=WRITER) as http:
        responses = [await http.post("/v1/jobs", json=job) for job in jobs]
    assert [response.status_code for response in responses] == [202] * len(jobs)
    return [response.json()["id"] for response in responses]


async def all_finished(db: asyncpg.Connection) -> bool:
    return not await db.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'dead')")


async def test_with_the_direct_url_listen_wakes_the_worker_at_once(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    routed_backends: Backends,
    db: asyncpg.Connection,
) -> None:
    assert routed_backends.pool_mode == "transaction"
    assert routed_backends.direct_url is not None
    api = start_api()
    # A 5 s poll: a job done within ~1 s was woken by NOTIFY (sent through the pooler, heard on the direct URL).
    start_worker(WORKER_POLL_INTERVAL_SECONDS="5", JOB_LEASE_SECONDS="8")
    await asyncio.sleep(0.5)  # the listener connects during the first upkeep
    started = time.monotonic()
    [job] = await post_jobs(api, [{"kind": "cpu.burn", "params": {"milliseconds": 10}}])
    await wait_until(lambda: all_finished(db), 10, "the job to finish")
    assert time.monotonic() - started < 2.5, "the worker waited for its poll: LISTEN did not wake it"
    assert await db.fetchval("SELECT state FROM jobs WHERE id = $1::uuid", job) == "succeeded"


async def test_without_the_direct_url_the_worker_polls_and_says_so_and_loses_no_job(
    start_api: Callable[..., ApiProcess], routed_backends: Backends, db: asyncpg.Connection, tmp_path: Path
) -> None:
    api = start_api()
    pooled_only = replace(routed_backends, direct_url=None)
    steady = WorkerProcess(worker_env(pooled_only), tmp_path / "steady.log").start().wait_ready()
    victim = WorkerProcess(worker_env(pooled_only), tmp_path / "victim.log").start().wait_ready()
    try:
        said = lines_where([steady.logfile], lambda line: "polling every" in line.get("msg", ""))
        assert said, "the worker did not say it polls"
        # 3 s jobs under a 2 s lease: each needs its heartbeat (renewals through the pooler) to finish once.
        jobs = [{"kind": "cpu.burn", "params": {"milliseconds": 3000}} for _ in range(2)]
        jobs += [{"kind": "cpu.burn", "params": {"milliseconds": 100}} for _ in range(20)]
        jobs.append({"kind": "catalog.report", "params": {}})  # its child process reads through the pooler too
        ids = await post_jobs(api, jobs)

        async def victim_running() -> bool:
            victim_name = f"%:{victim.pid}"
            return bool(
                await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'running' AND worker LIKE $1", victim_name)
            )

        await wait_until(victim_running, 15, "the victim to run a job")
        victim.signal(signal.SIGKILL)  # its jobs come back through the reaper, through the pooler
        victim.wait(5)
        await wait_until(lambda: all_finished(db), 90, "every job to finish")
    finally:
        steady.stop()
        victim.stop()
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'succeeded'") == len(ids)
    successes = await db.fetch("SELECT job_id, count(*) AS n FROM job_attempts WHERE outcome = 'succeeded' GROUP BY 1")
    assert {row["n"] for row in successes} == {1}  # each result stored once
    assert len(successes) == len(ids)
    assert await db.fetchval("SELECT count(*) FROM job_attempts WHERE outcome = 'lost'") >= 1


@pytest.fixture
def two_server_connections(backends: Backends) -> Iterator[Backends]:
    """PgBouncer (transaction mode) with two server connections: clients share them all the time."""
    workdir = servers.server_workdir("catalog-two-bouncer-")
    bouncer = start_pgbouncer(workdir, backends.database_url, pool_size=2)
    try:
        url = pooled_url(bouncer, backends.database_url)
        yield Backends(url, backends.redis_url, None, None, "transaction", backends.database_url)
    finally:
        bouncer.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_exports_from_two_processes_share_server_connections(
    two_server_connections: Backends, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two API processes export at once over two server connections. asyncpg's cursor() left its named
    statement on the server connection, and each process counts names from 1: the other process then
    met "prepared statement "__asyncpg_stmt_N__" already exists" (a 500 in the load test through PgBouncer)."""
    await seed(db, 2000)
    apis = [
        ApiProcess(api_env(two_server_connections, RATE_LIMIT_ENABLED="false"), tmp_path / f"api-{n}.log")
        .start()
        .wait_ready()
        for n in range(2)
    ]
    try:
        async with httpx.AsyncClient(base_url=apis[0].url) as one, httpx.AsyncClient(base_url=apis[1].url) as two:
            for _ in range(10):
                responses = await asyncio.gather(*(pod.get("/v1/items/export.csv") for pod in (one, two, one, two)))
                assert [response.status_code for response in responses] == [200] * 4
                assert {response.text.count("\r\n") for response in responses} == {2001}
    finally:
        for api in apis:
            api.stop()


def test_an_api_process_in_session_mode_through_pgbouncer_exits_naming_the_setting(
    routed_backends: Backends, tmp_path: Path
) -> None:
    """The default mode through a transaction-mode pooler: the pod does not start, and says why in one line."""
    session_mode = replace(routed_backends, pool_mode="session", direct_url=None)
    api = ApiProcess(api_env(session_mode), tmp_path / "api.log").start()
    try:
        with pytest.raises(RuntimeError, match="exited") as exited:
            api.wait_ready()
    finally:
        api.stop()
    line = (
        "configuration error: DATABASE_URL reaches a connection pooler that refused a startup parameter "
        "(unsupported startup parameter: statement_timeout): it is in transaction mode; "
        "set DATABASE_POOL_MODE=transaction"
    )
    assert line in str(exited.value)
