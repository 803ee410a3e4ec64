"""A primary failover under load, with real servers: PostgreSQL primary + streaming replica (pg_basebackup).

Two API processes (gunicorn, as pods run them) and a worker are given one
multi-host DATABASE_URL with `target_session_attrs=read-write`. Under steady
reads, writes and jobs the primary is stopped (`pg_ctl stop -m immediate`,
a node loss) LAG_SECONDS after the standby stopped receiving WAL (a standby
that lags, as across a real network), and PROMOTE_AFTER_SECONDS later the
replica is promoted. What a
client sees and what the database keeps is measured and asserted:

- failed requests are only 503 problem+json, and only between the lag's start
  (synchronous commits wait for the standby from then) and
  RECOVERY_BOUND_SECONDS after the promotion (the bound: a request on a dead
  connection fails at once, the breaker then turns requests away for
  BREAKER_RESET_SECONDS, its trial connects to the new primary; the rest is
  slack for this busy machine);
- every pod serves writes again without a restart (same process ids);
- /readyz is 503 while no writable primary answers (the replica is up, but in
  recovery: the probe refuses it) and 200 after;
- every acknowledged job runs to the end once (0 lost, 0 stored twice);
- acknowledged writes lost: 0 with synchronous replication; with asynchronous
  replication the count is reported, not asserted: it is the price of async.

The numbers are printed (`pytest -s`) and recorded in bench/results/failover.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import servers  # deploy/local (tests/fixtures/__init__.py puts it on sys.path)

from service.app import create_app
from service.migrate import migrate
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.items import new_item
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess, api_env, worker_env

pytestmark = pytest.mark.e2e

PROMOTE_AFTER_SECONDS = 2.0  # the time an operator (CloudNativePG, a managed service) takes to notice
BREAKER_RESET_SECONDS = 1.0
RECOVERY_BOUND_SECONDS = BREAKER_RESET_SECONDS + 4.0
STEADY_SECONDS = 3.0
LAG_SECONDS = 1.0
AFTER_SECONDS = 6.0
SEEDED = 200


@dataclass
class Pair:
    primary: servers.Postgres
    replica: servers.Postgres
    redis: servers.Redis

    def url(self, database: str = "catalog") -> str:
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.replica.port}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


async def _wait_sync(primary: servers.Postgres, synchronous: bool) -> None:
    conn = await asyncpg.connect(primary.url())
    try:
        if synchronous:
            # After the base backup, so the promoted replica does not wait for a standby of its own.
            await conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'replica1'")
            await conn.execute("SELECT pg_reload_conf()")
        wanted = "sync" if synchronous else "async"
        for _ in range(200):
            if await conn.fetchval("SELECT sync_state FROM pg_stat_replication") == wanted:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the replica never streamed as {wanted}")
    finally:
        await conn.close()


@contextlib.contextmanager
def replicated(synchronous: bool) -> Iterator[Pair]:
    """A primary with the catalog migrated, a streaming replica of it, and a Redis."""
    workdir = servers.server_workdir("catalog-failover-")
    # synchronous_commit=on on the command line: the throwaway servers turn it off for speed.
    primary = servers.Postgres(workdir / "primary", servers.free_port(), settings=("synchronous_commit=on",))
    replica = servers.Postgres(
        workdir / "replica", servers.free_port(), settings=("synchronous_commit=on", "cluster_name=replica1")
    )
    redis_server = servers.Redis(workdir / "redis", servers.free_port())
    try:
        primary.start()
        primary.create_database("catalog")
        asyncio.run(migrate(primary.url("catalog")))
        replica.clone_from(primary)
        replica.start()
        redis_server.start()
        asyncio.run(_wait_sync(primary, synchronous))
        yield Pair(primary, replica, redis_server)
    finally:
        redis_server.stop()
        for server in (replica, primary):
            if server.running():
                server.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["synchronous", "asynchronous"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    with replicated(request.param == "synchronous") as both:
        yield both


@dataclass
class Outcome:
    at: float
    what: str  # read, write, job, readyz
    pod: int
    status: int  # 0: no HTTP answer at all
    problem: bool = False
    ident: str | None = None


@dataclass
class Load:
    clients: list[httpx.AsyncClient]
    seeded: list[int]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    skus: Iterator[int] = field(default_factory=itertools.count)

    async def _send(self, what: str, pod: int, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await self.clients[pod].request(method, path, **kwargs)
        except httpx.HTTPError:
            self.outcomes.append(Outcome(started, what, pod, 0))
            return None
        problem = response.headers.get("content-type", "").startswith("application/problem+json")
        ident = None
        if what == "job" and response.status_code == 202:
            ident = response.json()["id"]
        elif what == "write" and response.status_code == 201:
            ident = response.json()["sku"]
        self.outcomes.append(Outcome(started, what, pod, response.status_code, problem, ident))
        return response

    async def reads(self, pod: int) -> None:
        while not self.stop.is_set():
            await self._send("read", pod, "GET", f"/v1/items/{random.choice(self.seeded)}")
            await asyncio.sleep(0.02)

    async def writes(self, pod: int) -> None:
        while not self.stop.is_set():
            sku = f"failover-{next(self.skus):06d}"
            body = {"sku": sku, "name": sku, "category": "drill", "price_cents": 1, "stock": 1}
            await self._send("write", pod, "POST", "/v1/items", json=body)
            await asyncio.sleep(0.03)

    async def jobs(self, pod: int) -> None:
        while not self.stop.is_set():
            await self._send("job", pod, "POST", "/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 20}})
            await asyncio.sleep(0.15)

    async def probes(self, pod: int) -> None:
        while not self.stop.is_set():
            await self._send("readyz", pod, "GET", "/readyz")
            await asyncio.sleep(0.1)


@pytest.fixture
async def stack(pair: Pair, tmp_path: Path) -> AsyncIterator[tuple[list[ApiProcess], WorkerProcess]]:
    backends = Backends(pair.url(), pair.redis.url(), None, None)
    settings = {
        "RATE_LIMIT_ENABLED": "false",
        "BREAKER_RESET_SECONDS": str(BREAKER_RESET_SECONDS),
        "DB_CONNECT_TIMEOUT_SECONDS": "2",
        "READINESS_TIMEOUT_SECONDS": "0.5",
    }
    apis = [ApiProcess(api_env(backends, **settings), tmp_path / f"api-{n}.log").start().wait_ready() for n in range(2)]
    worker = WorkerProcess(
        worker_env(backends, JOB_LEASE_SECONDS="4", WORKER_POLL_INTERVAL_SECONDS="0.5"), tmp_path / "worker.log"
    )
    worker.start().wait_ready()
    try:
        yield apis, worker
    finally:
        worker.stop()
        for api in apis:
            api.stop()


async def _wal_receiver(replica: servers.Postgres) -> int:
    conn = await asyncpg.connect(replica.url())
    try:
        pid = await conn.fetchval("SELECT pid FROM pg_stat_wal_receiver")
    finally:
        await conn.close()
    assert pid, "the replica is not streaming"
    return int(pid)


def _family(pid: int) -> set[int]:
    process = psutil.Process(pid)
    return {pid, *(child.pid for child in process.children(recursive=True))}


async def _seed(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO items (sku, name, category, price_cents, stock)"
            " SELECT 'seed-' || n, 'Seed ' || n, 'seed', n, 1 FROM generate_series(1, $1) AS n RETURNING id",
            SEEDED,
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows]


async def test_primary_failover_under_load(
    pair: Pair, stack: tuple[list[ApiProcess], WorkerProcess], request: pytest.FixtureRequest
) -> None:
    apis, worker = stack
    synchronous = request.node.callspec.params["pair"] == "synchronous"
    seeded = await _seed(pair.url())
    families = [_family(api.pid) for api in apis]
    clients = [httpx.AsyncClient(base_url=api.url, headers=WRITER, timeout=15) for api in apis]
    load = Load(clients, seeded)
    tasks = [
        asyncio.create_task(task(pod))
        for pod in range(2)
        for task in (load.reads, load.reads, load.writes, load.jobs, load.probes)
    ]
    await asyncio.sleep(STEADY_SECONDS)
    # The standby falls LAG_SECONDS behind just before the primary dies, as a standby across a real
    # network does: its WAL receiver is frozen, and killed once the primary is gone, so what waited in
    # its socket is lost with the link (on loopback the lag is too short for asynchronous replication
    # to lose anything, which would hide its price; a frozen receiver alone lost nothing either: it
    # read the kernel's buffer once thawed). The standby restarts its recovery from what it had flushed.
    receiver = await _wal_receiver(pair.replica)
    lag_started = time.monotonic()
    os.kill(receiver, signal.SIGSTOP)
    await asyncio.sleep(LAG_SECONDS)
    stopped_at = time.monotonic()
    await asyncio.to_thread(pair.primary.stop, "immediate")
    os.kill(receiver, signal.SIGKILL)
    await asyncio.sleep(PROMOTE_AFTER_SECONDS)
    promote_started = time.monotonic()
    await asyncio.to_thread(pair.replica.promote)
    promoted_at = time.monotonic()
    await asyncio.sleep(AFTER_SECONDS)
    load.stop.set()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()

    numbers = await _measure(pair, load, stopped_at, promoted_at)
    numbers["replication"] = "synchronous" if synchronous else "asynchronous"
    numbers["promote_seconds"] = round(promoted_at - promote_started, 2)
    numbers["standby_lag_before_the_stop_seconds"] = LAG_SECONDS
    print("\nFAILOVER " + json.dumps(numbers))

    failed = [o for o in load.outcomes if o.what != "readyz" and not 200 <= o.status < 300]
    assert all(o.status == 503 and o.problem for o in failed), {(o.what, o.status, o.problem) for o in failed}
    # Synchronous: writes stall from the lag's start (their commits wait for the standby), then fail.
    assert all(lag_started - 0.1 <= o.at <= promoted_at + RECOVERY_BOUND_SECONDS for o in failed), numbers
    assert numbers["seconds_until_every_pod_writes"] <= RECOVERY_BOUND_SECONDS, numbers
    assert [_family(api.pid) for api in apis] == families, "a pod restarted"
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker restarted"
    # /readyz: 503 throughout the time without a writable primary, once the old connection was found dead.
    probes = [o for o in load.outcomes if o.what == "readyz"]
    without_primary = [o for o in probes if stopped_at + 1.0 <= o.at <= promote_started - 0.1]
    assert without_primary
    assert {o.status for o in without_primary} == {503}
    assert {o.status for o in probes if o.at >= promoted_at + RECOVERY_BOUND_SECONDS} == {200}
    assert numbers["jobs_completed_twice"] == 0
    if synchronous:
        assert numbers["acknowledged_writes_lost"] == 0
        assert numbers["acknowledged_jobs_lost"] == 0


async def _measure(pair: Pair, load: Load, stopped_at: float, promoted_at: float) -> dict[str, Any]:
    outcomes = [o for o in load.outcomes if o.what != "readyz"]
    failed = [o for o in outcomes if not 200 <= o.status < 300]
    first_writes = [
        min(
            (o.at for o in outcomes if o.what == "write" and o.pod == pod and o.status == 201 and o.at >= promoted_at),
            default=float("inf"),
        )
        for pod in range(2)
    ]
    acknowledged_skus = {o.ident for o in outcomes if o.what == "write" and o.ident}
    acknowledged_jobs = {o.ident for o in outcomes if o.what == "job" and o.ident}
    conn = await asyncpg.connect(pair.url())
    try:
        for _ in range(300):  # every job that reached the new primary runs to its end
            if not await conn.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'dead')"):
                break
            await asyncio.sleep(0.1)
        stored_skus = {row["sku"] for row in await conn.fetch("SELECT sku FROM items WHERE category = 'drill'")}
        jobs = {str(row["id"]): row["state"] for row in await conn.fetch("SELECT id, state FROM jobs")}
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded'"
            " GROUP BY job_id HAVING count(*) > 1) AS t"
        )
    finally:
        await conn.close()
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "failed_statuses": sorted({o.status for o in failed}),
        "failed_window_seconds": [
            round(min((o.at for o in failed), default=stopped_at) - stopped_at, 2),
            round(max((o.at for o in failed), default=stopped_at) - stopped_at, 2),
        ],
        "promoted_after_stop_seconds": round(promoted_at - stopped_at, 2),
        "seconds_until_every_pod_writes": round(max(first_writes) - promoted_at, 2),
        "acknowledged_writes": len(acknowledged_skus),
        "acknowledged_writes_lost": len(acknowledged_skus - stored_skus),
        "acknowledged_jobs": len(acknowledged_jobs),
        "acknowledged_jobs_lost": len(acknowledged_jobs - set(jobs)),
        "jobs_not_succeeded": sum(1 for job in acknowledged_jobs & set(jobs) if jobs[job] != "succeeded"),
        "jobs_completed_twice": twice,
    }


def test_a_connection_on_a_read_only_server_is_closed_not_reused() -> None:
    """A switchover can leave pooled connections on the old primary, now a standby. A write there is
    a 503 problem and closes that connection (the next one is opened anew); /readyz says 503."""
    with replicated(synchronous=False) as both:
        asyncio.run(_write_to_a_standby(both))


async def _write_to_a_standby(both: Pair) -> None:
    standby = f"postgresql://postgres@127.0.0.1:{both.replica.port}/catalog"  # no target_session_attrs
    settings = make_settings(Backends(standby, both.redis.url(), None, None), db_pool_min_size=1, db_pool_max_size=1)
    conn = await asyncpg.connect(standby)
    try:
        async with lifespan_client(create_app(settings)) as client:
            client.headers.update(WRITER)
            before = await _api_sessions(conn)
            response = await client.post("/v1/items", json=new_item(1))
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert before
            assert before.isdisjoint(await _api_sessions(conn)), "the read-only connection went back to the pool"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgres"] == "error: ReadOnlyServer"
    finally:
        await conn.close()


async def _api_sessions(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = 'catalog-api'")
    return {row["pid"] for row in rows}
