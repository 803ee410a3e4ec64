"""The worker tier under failure: real `python -m service.worker` processes against real PostgreSQL.

Workers run with short clocks (2 s lease, 0.5 s poll; see worker_env) so each
drill takes seconds; the mechanisms are the ones production runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from service.jobs import repository
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess

pytestmark = pytest.mark.e2e

LEASE, POLL = 2.0, 0.5


async def enqueue(db: asyncpg.Connection, kind: str, params: dict[str, Any], max_attempts: int = 5) -> uuid.UUID:
    row, _ = await repository.enqueue(
        db, repository.NewJob(kind, params, max_attempts, "test", None, None, None, None, None)
    )
    return uuid.UUID(str(row["id"]))


async def wait_until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def states(db: asyncpg.Connection) -> dict[str, int]:
    return {row["state"]: row["n"] for row in await db.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")}


def job_children(worker: WorkerProcess) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children(recursive=True)


async def test_chaos_200_jobs_two_workers_one_killed_repeatedly_every_job_succeeds_once(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection
) -> None:
    ids = [await enqueue(db, "cpu.burn", {"milliseconds": 60}) for _ in range(200)]
    steady = start_worker()
    victim = start_worker()
    kills: list[float] = []
    for _ in range(3):
        await wait_until(functools.partial(_running_on, db, victim), 10, "the victim to be running a job")
        children = job_children(victim)
        victim.signal(signal.SIGKILL)
        kills.append(time.time())
        victim.wait(5)
        # Its fork server and job processes die with it: nothing keeps burning CPU.
        # A zombie has exited (it waits for a reaper: PID 1 here may be slow to reap orphans).
        _, alive = psutil.wait_procs(children, timeout=3)
        alive = [process for process in alive if not _dead(process)]
        assert not alive, f"orphaned job processes: {alive}"
        victim = start_worker()
        await asyncio.sleep(0.3)

    await wait_until(lambda: _all_finished(db), 120, "all 200 jobs to finish")
    assert await states(db) == {"succeeded": 200}
    successes = await db.fetch(
        "SELECT job_id, count(*) AS n FROM job_attempts WHERE outcome = 'succeeded' GROUP BY job_id"
    )
    assert sorted(row["job_id"] for row in successes) == sorted(ids)
    assert {row["n"] for row in successes} == {1}  # each result stored exactly once
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE result IS NULL") == 0

    # Each kill left running jobs behind; each was made runnable again within lease + poll.
    lost = await db.fetch(
        "SELECT job_id, extract(epoch FROM finished_at) AS at FROM job_attempts WHERE outcome = 'lost'"
    )
    assert lost, "no kill caught a running job"
    for row in lost:
        kill = max(k for k in kills if k <= float(row["at"]))
        recovery = float(row["at"]) - kill
        assert recovery <= LEASE + POLL + 0.5, f"recovered {recovery:.2f} s after the kill"
    assert steady.process is not None
    assert steady.process.poll() is None, "the steady worker kept running throughout"


async def _running_on(db: asyncpg.Connection, worker: WorkerProcess) -> bool:
    count = await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'running' AND worker LIKE $1", f"%:{worker.pid}")
    return bool(count)


async def _all_finished(db: asyncpg.Connection) -> bool:
    return not await db.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'dead')")


async def test_jobs_are_enqueued_and_completed_with_redis_down_for_the_whole_run(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    backends: Backends,
    db: asyncpg.Connection,
) -> None:
    import servers  # noqa: PLC0415 - deploy/local, on sys.path via tests/fixtures/__init__.py

    nothing_listens = f"redis://127.0.0.1:{servers.free_port()}/0"
    api = start_api(REDIS_URL=nothing_listens)
    start_worker()
    async with httpx.AsyncClient(base_url=api.url, headers=WRITER) as http:
        created = [
            await http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 20}}) for _ in range(10)
        ]
        assert [response.status_code for response in created] == [202] * 10
        created.append(await http.post("/v1/jobs", json={"kind": "catalog.report", "params": {}}))

        async def finished() -> list[dict[str, Any]] | None:
            jobs = [(await http.get(response.headers["location"])).json() for response in created]
            return jobs if all(job["state"] == "succeeded" for job in jobs) else None

        jobs = await wait_until(finished, 30, "the jobs to succeed")
    assert jobs[-1]["result"]["items"] == 0


async def test_a_job_that_always_raises_ends_dead_with_its_error_and_attempts_visible(
    start_worker: Callable[..., WorkerProcess], backends: Backends, db: asyncpg.Connection
) -> None:
    start_worker()
    async with lifespan_client(_app(backends, job_max_attempts=3)) as http:
        http.headers.update(WRITER)
        created = await http.post(
            "/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1, "fail_attempts": 99}}
        )
        location = created.headers["location"]

        async def dead() -> dict[str, Any] | None:
            job: dict[str, Any] = (await http.get(location)).json()
            return job if job["state"] == "dead" else None

        job = await wait_until(dead, 20, "the job to be dead")
    assert job["attempts"] == 3
    assert job["max_attempts"] == 3
    assert job["error"] == "RuntimeError: injected failure on attempt 3 of 99"
    assert job["finished_at"] is not None
    history = await db.fetch("SELECT attempt, outcome, error FROM job_attempts ORDER BY attempt")
    assert [(row["attempt"], row["outcome"]) for row in history] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert "Traceback" in history[0]["error"]  # operators get the traceback; the API shows one line


def _app(backends: Backends, **overrides: object) -> Any:
    from service.app import create_app  # noqa: PLC0415

    return create_app(make_settings(backends, **overrides))


async def test_a_job_past_its_timeout_is_killed_counted_as_an_attempt_and_retried(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection
) -> None:
    worker = start_worker(JOB_TIMEOUT_SECONDS="1", WORKER_CONCURRENCY="1")
    job_id = await enqueue(db, "cpu.burn", {"milliseconds": 30_000}, max_attempts=2)
    await wait_until(lambda: _state_is(db, job_id, "dead"), 15, "both attempts to time out")
    history = await db.fetch("SELECT attempt, outcome FROM job_attempts WHERE job_id = $1 ORDER BY attempt", job_id)
    assert [(row["attempt"], row["outcome"]) for row in history] == [(1, "timeout"), (2, "timeout")]
    error = await db.fetchval("SELECT error FROM jobs WHERE id = $1", job_id)
    assert error.startswith("timed out after 1 s; child process ")
    last_pid = int(error.split("child process ")[1].split()[0])
    lines = worker.logs(until=lambda entry: entry.get("child_pid") == last_pid)  # the second attempt's line
    killed = [entry["child_pid"] for entry in lines if entry["msg"] == "job timed out"]
    assert len(killed) == 2
    assert killed[1] == last_pid
    for pid in killed:
        assert not psutil.pid_exists(pid), f"child {pid} survived its timeout"
    # The slot got a fresh child, and the first job on it runs at once (a stale event-loop
    # registration for the killed child's pipe once made every later job time out).
    for _ in range(3):
        quick = await enqueue(db, "cpu.burn", {"milliseconds": 1})
        await wait_until(lambda: _state_is(db, quick, "succeeded"), 10, "a job after the timeouts")  # noqa: B023
    attempts = await db.fetchval("SELECT max(attempts) FROM jobs WHERE params->>'milliseconds' = '1'")
    assert attempts == 1


async def _state_is(db: asyncpg.Connection, job_id: uuid.UUID, state: str) -> bool:
    return bool(await db.fetchval("SELECT state = $2 FROM jobs WHERE id = $1", job_id, state))


async def test_sigterm_lets_a_running_job_finish_within_the_grace_period(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection
) -> None:
    worker = start_worker(WORKER_SHUTDOWN_GRACE_SECONDS="20")
    job_id = await enqueue(db, "cpu.burn", {"milliseconds": 1500})
    await wait_until(lambda: _state_is(db, job_id, "running"), 10, "the job to start")
    worker.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{worker.url}/readyz")).status_code == 503  # out of rotation while it drains
    late = await enqueue(db, "cpu.burn", {"milliseconds": 1})
    assert await asyncio.to_thread(worker.wait, 20) == 0
    assert await _state_is(db, job_id, "succeeded")
    assert await _state_is(db, late, "queued")  # a draining worker claims nothing new


async def test_sigterm_past_the_grace_period_releases_the_job_to_another_worker(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection
) -> None:
    leaving = start_worker(WORKER_SHUTDOWN_GRACE_SECONDS="0.5", WORKER_CONCURRENCY="1")
    job_id = await enqueue(db, "cpu.burn", {"milliseconds": 2500})
    await wait_until(lambda: _state_is(db, job_id, "running"), 10, "the job to start")
    start_worker()
    leaving.signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.wait, 10) == 0
    await wait_until(lambda: _state_is(db, job_id, "succeeded"), 15, "another worker to finish the job")
    history = await db.fetch("SELECT attempt, outcome, worker FROM job_attempts WHERE job_id = $1", job_id)
    outcomes = sorted((row["attempt"], row["outcome"]) for row in history)
    assert outcomes == [(1, "released"), (1, "succeeded")]  # a release does not spend an attempt
    assert {row["worker"].rsplit(":", 1)[1] for row in history} == {
        str(leaving.pid),
        history[1]["worker"].rsplit(":", 1)[1],
    }
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'running'") == 0


async def test_a_frozen_worker_that_comes_back_cannot_store_a_second_result(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection
) -> None:
    frozen = start_worker(WORKER_CONCURRENCY="1")
    job_id = await enqueue(db, "cpu.burn", {"milliseconds": 1500})
    # Started in the worker, not just claimed in the table: frozen between the two, the
    # worker never learns it holds the job (it simply expires), which is not this case.
    await wait_until(lambda: _logged(frozen, "job started"), 10, "the job to start")
    children = job_children(frozen)
    for process in [psutil.Process(frozen.pid), *children]:
        process.suspend()  # a GC pause, a frozen VM, a partition: the lease runs out
    rescuer = start_worker()
    await wait_until(lambda: _state_is(db, job_id, "succeeded"), 15, "the rescuer to finish the job")
    for process in [psutil.Process(frozen.pid), *children]:
        process.resume()
    await wait_until(
        lambda: _logged(frozen, "job outcome discarded: another worker took the job over"),
        10,
        "the frozen worker to notice",
    )
    attempts = await db.fetch(
        "SELECT attempt, outcome, worker FROM job_attempts WHERE job_id = $1 ORDER BY attempt", job_id
    )
    assert [(row["attempt"], row["outcome"]) for row in attempts] == [(1, "lost"), (2, "succeeded")]
    assert attempts[1]["worker"].endswith(f":{rescuer.pid}")


async def _logged(worker: WorkerProcess, message: str) -> bool:
    return any(entry["msg"] == message for entry in worker.logs())


async def test_worker_metrics_are_clean_openmetrics_and_count_outcomes(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection, tmp_path: Any
) -> None:
    worker = start_worker()
    for params in ({"milliseconds": 1}, {"milliseconds": 1, "fail_attempts": 9}):
        await enqueue(db, "cpu.burn", params, max_attempts=1)
    await wait_until(lambda: _all_finished(db), 10, "both jobs to finish")
    await asyncio.sleep(POLL * 2)  # the next upkeep samples the dead count
    async with httpx.AsyncClient() as http:
        openmetrics = await http.get(f"{worker.url}/metrics", headers={"Accept": "application/openmetrics-text"})
        text = (await http.get(f"{worker.url}/metrics")).text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert 'jobs_processed_total{kind="cpu.burn",outcome="succeeded"} 1.0' in text
    assert 'jobs_processed_total{kind="cpu.burn",outcome="dead"} 1.0' in text
    assert 'jobs_dead{kind="cpu.burn"} 1.0' in text
    assert 'job_queue_depth{kind="catalog.report"} 0.0' in text  # every kind has its series from the start
    assert "worker_slots 2.0" in text
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus package (make install installs it)"
    check = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_old_finished_jobs_are_pruned_and_waiting_ones_kept(db: asyncpg.Connection) -> None:
    old = [await enqueue(db, "cpu.burn", {"milliseconds": 1}) for _ in range(4)]
    for job_id, state in zip(old, ["succeeded", "dead", "cancelled", "queued"], strict=True):
        await db.execute(
            """UPDATE jobs SET state = $2, created_at = now() - interval '8 days',
                   finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() - interval '8 days' END
               WHERE id = $1""",
            job_id,
            state,
        )
    recent = await enqueue(db, "cpu.burn", {"milliseconds": 1})
    await db.execute("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", recent)
    assert await repository.prune(db, retention_hours=168) == 3
    left = {row["id"] for row in await db.fetch("SELECT id FROM jobs")}
    assert left == {old[3], recent}


def _dead(process: psutil.Process) -> bool:
    """Gone, or a zombie waiting to be reaped (it runs nothing any more)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _seconds_until_dead(processes: list[psutil.Process], since: float, limit: float) -> float:
    while not all(_dead(process) for process in processes) and time.monotonic() - since < limit:
        time.sleep(0.01)
    return time.monotonic() - since


@pytest.mark.parametrize(
    "signals",
    [
        (signal.SIGKILL,),
        (signal.SIGTERM, signal.SIGKILL),  # killed in the middle of its graceful wind-down
        (signal.SIGSEGV,),  # a crash in a C extension
        (signal.SIGUSR1,),  # a signal the worker does not handle: the default action ends it
        (signal.SIGABRT,),
    ],
    ids=lambda signals: "-then-".join(sig.name for sig in signals),
)
async def test_job_processes_die_within_a_second_of_their_worker(
    start_worker: Callable[..., WorkerProcess], db: asyncpg.Connection, signals: tuple[signal.Signals, ...]
) -> None:
    # Outside a container the worker is not PID 1: nothing kills its descendants for it.
    worker = start_worker(WORKER_CONCURRENCY="2", JOB_LEASE_SECONDS="30")
    psutil.Process(worker.pid).rlimit(psutil.RLIMIT_CORE, (0, 0))  # SIGSEGV/SIGABRT: no core file
    jobs = [await enqueue(db, "cpu.burn", {"milliseconds": 20_000}) for _ in range(2)]
    for job_id in jobs:
        await wait_until(lambda: _state_is(db, job_id, "running"), 10, "both jobs to start")  # noqa: B023
    await asyncio.sleep(1.5)
    descendants = job_children(worker)  # the fork server, its job processes, the resource tracker
    jobs_processes = [process for process in descendants if process.ppid() != worker.pid]
    assert len(jobs_processes) == 2, descendants
    assert all(process.cpu_times().user > 0.1 for process in jobs_processes), "the jobs are not running"
    try:
        for sig in signals[:-1]:
            worker.signal(sig)
            await asyncio.sleep(0.3)
        worker.signal(signals[-1])
        killed = time.monotonic()
        worker.wait(5)
        seconds = _seconds_until_dead(descendants, since=killed, limit=5)
        left = [process for process in descendants if not _dead(process)]
        print(f"{'-then-'.join(sig.name for sig in signals)}: no job process left {seconds:.3f} s after the kill")
        assert not left, f"{left} outlived the worker by {seconds:.1f} s"
        assert seconds < 1.0
    finally:
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
