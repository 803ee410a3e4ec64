"""`make drill`: fault drills against the `make up` stack, each under steady load, each bounded in time.

    PYTHONPATH=bench uv run python -m loadtest.drills [--only NAME ...] [--rate 30] [--fault-seconds 30]

Drills, in order: a rolling restart of the API pods, a worker SIGKILLed while
it runs jobs, Redis stopped, PostgreSQL stopped, PostgreSQL slowed by a lock
held on the items table, and two that need `make up` run another way (skipped
otherwise): PgBouncer restarted (`make up PGBOUNCER=1`) and the primary
stopped and its streaming replica promoted (`make up REPLICA=1`; afterwards
the old primary is rebuilt as the new one's replica). Each one:
1. waits until no alert is firing, then sends steady traffic (reads through
   nginx from twenty simulated clients, and a job a second with the API key)
   for a few seconds of baseline;
2. applies the fault and, where the fault is an outage, lifts it after
   --fault-seconds (the restart and the kill are repaired by `make up` itself);
3. keeps the traffic going until the stack has recovered, then checks that
   every job accepted with 202 ended `succeeded` (a job lost is a failed drill);
4. asks Prometheus which alerts fired during the drill, and records its
   timeline: the fault's start and end, requests answered and failed per
   second, and each alert's pending and firing spans (ALERTS, read at the
   rule evaluation interval), all in seconds from the drill's start, so
   `make docs-images` draws it (docs/images/drills.png) from drills.json alone.

Alerts are judged with the rules' test profile (monitoring/generate.py
--profile test: the production expressions with windows shortened, 5m -> 20 s,
2m -> 10 s, ...), loaded into the stack's Prometheus for the drills and
replaced by the production rules afterwards, so an alert can fire within a
30 s fault. Traffic goes to loopback only. Results (Markdown and JSON) go to
RUN_DIR/drills/<time>/; the console prints the table and the path. With
--record (`make drill RECORD=1`) the run's drills also replace the ones of the
same name in bench/results/drills.json, the recorded run the docs draw from
(the others stay: the database drills need a stack started another way), and
the table between the markers of bench/results/drills.md is written from it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from loadtest.prometheus import Prometheus
from service import slo as slo_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))
import servers  # noqa: E402  (deploy/local/servers.py)
import stack as local_stack  # noqa: E402  (deploy/local/stack.py: stdlib only)

STACK_SCRIPT = ROOT / "deploy" / "local" / "stack.py"
JOB = {"kind": "cpu.burn", "params": {"milliseconds": 300}}  # long enough that a kill finds jobs running


@dataclass
class Sample:
    sent: float  # unix seconds
    done: float
    status: int  # 0: no response (connection refused, reset, timeout)


@dataclass
class Traffic:
    """Steady open-loop load: `rate` reads a second through nginx plus one job a second."""

    base: str
    api_key: str
    item_ids: list[int]
    rate: float
    samples: list[Sample] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # accepted with 202
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        sent = time.time()
        try:
            response = await http.request(method, path, **kwargs)
        except httpx.HTTPError:
            self.samples.append(Sample(sent, time.time(), 0))
            return None
        self.samples.append(Sample(sent, time.time(), response.status_code))
        return response

    async def _read(self, http: httpx.AsyncClient, client: int) -> None:
        headers = {"X-Forwarded-For": f"198.51.100.{client}"}  # TEST-NET-2 text only: see locustfile.py
        if random.random() < 0.3:
            await self._one(http, "GET", "/v1/items?limit=20", headers=headers)
        else:
            await self._one(http, "GET", f"/v1/items/{random.choice(self.item_ids)}", headers=headers)

    async def _submit(self, http: httpx.AsyncClient) -> None:
        auth = {"Authorization": f"Bearer {self.api_key}"}
        response = await self._one(http, "POST", "/v1/jobs", json=JOB, headers=auth)
        if response is not None and response.status_code == 202:
            self.jobs.append(response.json()["id"])

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        clients = itertools.cycle(range(1, 21))
        async with httpx.AsyncClient(base_url=self.base, timeout=15) as http:
            start = time.monotonic()
            for n in itertools.count():
                if self._stop.is_set():
                    break
                await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
                task = asyncio.create_task(self._read(http, next(clients)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if n % max(1, round(self.rate)) == 0:
                    job = asyncio.create_task(self._submit(http))
                    tasks.add(job)
                    job.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class AlertSpan:
    """One stretch of an alert in one state, in seconds from the drill's start (`began`).

    An alert name can stand for several rules (the error-budget burn has one per window pair):
    `severity` and `window` (the rule's `long` label, when it has one) tell them apart.
    """

    alert: str
    state: str  # "pending" (its expression is true, `for` not yet over) or "firing"
    start: float
    end: float
    severity: str = ""
    window: str = ""


@dataclass
class Timeline:
    """When things happened in one drill, in seconds from its start (the baseline's first request).

    `seconds` has one row per second of traffic: [second, answered 2xx, failed (any other status
    or no answer)], counted by when each request was sent. Alert spans come from Prometheus's
    ALERTS series sampled every ALERT_STEP seconds (the stack's rule evaluation interval), so
    their edges are as precise as that interval.
    """

    began: float  # unix seconds
    fault_start: float
    fault_end: float
    last_failure: float | None  # the last failed request's answer; None when none failed
    ended: float
    seconds: list[list[int]]
    alerts: list[AlertSpan]


# The stack's Prometheus evaluates rules every 5 s (monitoring/prometheus/prometheus.yml).
ALERT_STEP = 5.0


def _per_second(samples: list[Sample], began: float) -> list[list[int]]:
    counts: dict[int, list[int]] = {}
    for sample in samples:
        row = counts.setdefault(int(sample.sent - began), [0, 0])
        row[0 if 200 <= sample.status < 300 else 1] += 1
    return [[second, *counts.get(second, [0, 0])] for second in range(max(counts, default=-1) + 1)]


def _alert_spans(prometheus: Prometheus, began: float, ended: float) -> list[AlertSpan]:
    """Contiguous runs of each (alert, state) in ALERTS between `began` and `ended`."""
    spans: list[AlertSpan] = []
    for series in prometheus.series("ALERTS", began, ended, ALERT_STEP):
        times = [t for t, _ in series.points]
        run_start = previous = times[0] if times else 0.0
        for t in [*times[1:], None]:
            if t is None or t - previous > ALERT_STEP * 1.5:
                spans.append(
                    AlertSpan(
                        series.labels["alertname"],
                        series.labels.get("alertstate", "firing"),
                        round(max(0.0, run_start - began), 1),
                        round(min(previous + ALERT_STEP, ended) - began, 1),
                        series.labels.get("severity", ""),
                        series.labels.get("long", ""),
                    )
                )
                if t is not None:
                    run_start = t
            if t is not None:
                previous = t
    return sorted(spans, key=lambda s: (s.alert, s.window, s.start))


@dataclass
class Result:
    drill: str
    fault: str
    requests: int
    failed_by_status: dict[str, int]
    jobs_accepted: int
    jobs_lost: int
    job_states: dict[str, int]
    fault_seconds: float  # how long the fault lasted (for a restart: how long the roll took)
    recovery_seconds: float  # from the fault's end to the last failed request (0: none failed after it)
    expected_alerts: list[str]
    alerts_fired: list[str]
    timeline: Timeline | None = None

    @property
    def passed(self) -> bool:
        return self.jobs_lost == 0 and set(self.expected_alerts) <= set(self.alerts_fired)


@dataclass
class Drill:
    name: str
    fault: str
    expected_alerts: list[str]
    inject: Callable[[Context], Awaitable[tuple[float, float]]]  # returns (fault start, fault end), unix seconds


@dataclass
class Context:
    stack: local_stack.Stack
    env: dict[str, str]
    fault_seconds: float

    def stack_command(self, command: str) -> None:
        run = subprocess.run([sys.executable, str(STACK_SCRIPT), command], env=self.env, check=False, text=True)
        if run.returncode != 0:
            raise DrillError(f"`stack.py {command}` failed (exit {run.returncode}); see the lines above")

    def reload(self) -> local_stack.Stack:
        loaded = local_stack.Stack.load(self.stack.run_dir)
        if loaded is None:
            raise DrillError(f"{self.stack.state_file} disappeared")
        self.stack = loaded
        return loaded


class DrillError(RuntimeError):
    """A drill could not be run (not its outcome): the message says what is missing."""


async def _rolling_restart(context: Context) -> tuple[float, float]:
    start = time.time()
    await asyncio.to_thread(context.stack_command, "restart-api")
    return start, time.time()


async def _kill_worker(context: Context) -> tuple[float, float]:
    metrics = f"http://127.0.0.1:{context.stack.worker_metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=2) as http:  # wait until the worker is running a job
        for _ in range(100):
            text = (await http.get(metrics)).text
            running = [line for line in text.splitlines() if line.startswith("worker_jobs_running ")]
            if running and float(running[0].split()[1]) > 0:
                break
            await asyncio.sleep(0.1)
    start = time.time()
    os.kill(context.reload().pids["worker"], signal.SIGKILL)
    # Down long enough for CatalogWorkerDown to fire in the test profile: a failed scrape (5 s), its
    # `for` (5m -> 20 s) and an evaluation (5 s); the jobs' leases (30 s) expire meanwhile.
    await asyncio.sleep(max(context.fault_seconds, 40))
    await asyncio.to_thread(context.stack_command, "up")  # `make up` again starts what is missing
    return start, time.time()


async def _outage(server: servers.Postgres | servers.Redis, fault_seconds: float) -> tuple[float, float]:
    """Stops a server `make up` started, waits, starts it again."""
    start = time.time()
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(fault_seconds)
    await asyncio.to_thread(server.start)
    return start, time.time()


async def _stop_redis(context: Context) -> tuple[float, float]:
    if not context.stack.own_redis:
        raise DrillError("REDIS_URL points at a Redis `make up` did not start: not stopping it")
    return await _outage(context.stack.redis(), context.fault_seconds)


async def _stop_postgres(context: Context) -> tuple[float, float]:
    if not context.stack.own_postgres:
        raise DrillError("DATABASE_URL points at a PostgreSQL `make up` did not start: not stopping it")
    return await _outage(context.stack.postgres(), context.fault_seconds)


async def _slow_postgres(context: Context) -> tuple[float, float]:
    """Every statement on `items` waits behind an exclusive lock (up to DB_STATEMENT_TIMEOUT_SECONDS)."""
    connection = await asyncpg.connect(context.stack.database_url)
    try:
        start = time.time()
        async with connection.transaction():
            await connection.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(context.fault_seconds)
        return start, time.time()
    finally:
        await connection.close()


async def _restart_pgbouncer(context: Context) -> tuple[float, float]:
    """PgBouncer (transaction mode, `make up PGBOUNCER=1`) stopped at once, then started again:
    every client connection through it dies; the pods' pools reconnect."""
    if not context.stack.pgbouncer:
        raise DrillError("the stack runs without PgBouncer: `make down && make up PGBOUNCER=1` first")
    bouncer = context.stack.pgbouncer_server()
    start = time.time()
    await asyncio.to_thread(bouncer.stop)
    await asyncio.sleep(context.fault_seconds)
    await asyncio.to_thread(bouncer.start)
    return start, time.time()


async def _fail_over(context: Context) -> tuple[float, float]:
    """The primary stopped at once (a node loss); PROMOTE_AFTER_SECONDS later the replica is promoted.
    The URL names both servers with target_session_attrs=read-write: nothing is re-pointed. After the
    drill, the old primary is rebuilt as a replica of the new one (pg_basebackup), as an operator would."""
    stack = context.reload()
    if not stack.replica:
        raise DrillError("the stack runs without a replica: `make down && make up REPLICA=1` first")
    first, second = stack.postgres(), stack.postgres_replica()
    primary, replica = (first, second) if not first.in_recovery() else (second, first)
    if replica.in_recovery() is not True:
        raise DrillError(f"no standby streaming on port {replica.port}: run `make up REPLICA=1` again")
    start = time.time()
    await asyncio.to_thread(primary.stop, "immediate")
    await asyncio.sleep(PROMOTE_AFTER_SECONDS)
    await asyncio.to_thread(replica.promote)
    end = time.time()
    await asyncio.sleep(15)  # the recovery is measured before the rebuild's base backup adds its load
    shutil.rmtree(primary.datadir)
    await asyncio.to_thread(primary.clone_from, replica)
    await asyncio.to_thread(primary.start)
    return start, end


# The time an operator (CloudNativePG, a managed service) takes to notice a lost primary and promote.
PROMOTE_AFTER_SECONDS = 5.0


DRILLS = [
    Drill("rolling-restart", "API pods restarted one at a time (`make restart-api`)", [], _rolling_restart),
    Drill(
        "worker-kill", "worker SIGKILLed while running jobs, back after the fault", ["CatalogWorkerDown"], _kill_worker
    ),
    Drill("redis-stop", "Redis stopped, then started again", [], _stop_redis),
    Drill(
        "postgres-stop",
        "PostgreSQL stopped, then started again",
        ["CatalogApiErrorRateHigh"],
        _stop_postgres,
    ),
    Drill("postgres-slow", "an exclusive lock held on the items table", ["CatalogApiLatencyP99High"], _slow_postgres),
    Drill(
        "pgbouncer-restart",
        "PgBouncer stopped, then started again (`make up PGBOUNCER=1`)",
        ["CatalogApiErrorRateHigh"],
        _restart_pgbouncer,
    ),
    Drill(
        "primary-failover",
        f"primary stopped, replica promoted {PROMOTE_AFTER_SECONDS:g} s later (`make up REPLICA=1`)",
        # About 6 s of 503s: the fast error-budget burn pages; the error-rate alert's `for` outlasts it.
        ["CatalogApiErrorBudgetBurn"],
        _fail_over,
    ),
]


def _switch_rules(stack: local_stack.Stack, profile: str) -> None:
    """Loads the rules of `profile` into the stack's Prometheus (SIGHUP re-reads them)."""
    rules = stack.run_dir / "prometheus" / "rules"
    shutil.rmtree(rules, ignore_errors=True)
    if profile == "production":
        shutil.copytree(ROOT / "monitoring" / "prometheus" / "rules", rules)
    else:
        rules.mkdir(parents=True)
        generate = [sys.executable, "monitoring/generate.py", "--profile", profile, "--rules-dir", str(rules)]
        subprocess.run(generate, cwd=ROOT, check=True, capture_output=True)
    os.kill(stack.pids["prometheus"], signal.SIGHUP)


def _firing(prometheus: Prometheus) -> set[str]:
    return {item["metric"]["alertname"] for item in prometheus.instant('ALERTS{alertstate="firing"}')}


def _fired_between(prometheus: Prometheus, start: float, end: float) -> list[str]:
    query = f'max_over_time(ALERTS{{alertstate="firing"}}[{max(1, round(end - start))}s])'
    return sorted({item["metric"]["alertname"] for item in prometheus.instant(query, end)})


async def _wait_quiet(prometheus: Prometheus, within_seconds: float) -> None:
    for _ in range(int(within_seconds / 2)):
        firing = await asyncio.to_thread(_firing, prometheus)
        if not firing:
            return
        await asyncio.sleep(2)
    if firing:
        print(f"drill: still firing before the drill starts: {sorted(firing)} (reported, not counted)")


async def _job_states(base: str, api_key: str, jobs: list[str], within_seconds: float) -> dict[str, int]:
    states: dict[str, str] = {}
    deadline = time.monotonic() + within_seconds
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=5) as http:
        pending = list(jobs)
        while pending and time.monotonic() < deadline:
            for job in list(pending):
                try:
                    response = await http.get(f"/v1/jobs/{job}")
                except httpx.HTTPError:
                    continue
                state = "missing" if response.status_code == 404 else response.json().get("state", "?")
                states[job] = state
                if state in {"succeeded", "dead", "cancelled", "missing"}:
                    pending.remove(job)
            await asyncio.sleep(1)
    return dict(Counter(states.get(job, "unknown") for job in jobs))


async def run_drill(drill: Drill, context: Context, prometheus: Prometheus, rate: float, ids: list[int]) -> Result:
    await _wait_quiet(prometheus, 120)
    base = f"http://127.0.0.1:{context.stack.api_port}"
    api_key = (context.stack.run_dir / "api-key").read_text().strip()
    traffic = Traffic(base, api_key, ids, rate)
    load = asyncio.create_task(traffic.run())
    began = time.time()
    await asyncio.sleep(5)  # baseline
    fault_start, fault_end = await drill.inject(context)
    # Keep the load on until nothing has failed for 10 s (at most 90 s after the fault's end).
    while time.time() < fault_end + 90:
        await asyncio.sleep(1)
        recent = [s for s in traffic.samples if s.done > time.time() - 10]
        if time.time() > fault_end + 10 and recent and all(200 <= s.status < 300 for s in recent):
            break
    traffic.stop()
    await load
    states = await _job_states(base, api_key, traffic.jobs, within_seconds=90)
    await asyncio.sleep(6)  # one more scrape and rule evaluation
    ended = time.time()
    failed = [s for s in traffic.samples if not 200 <= s.status < 300]
    last_failure = max((s.done for s in failed), default=fault_end)
    timeline = Timeline(
        began=round(began, 3),
        fault_start=round(fault_start - began, 1),
        fault_end=round(fault_end - began, 1),
        last_failure=round(last_failure - began, 1) if failed else None,
        ended=round(ended - began, 1),
        seconds=_per_second(traffic.samples, began),
        alerts=_alert_spans(prometheus, began, ended),
    )
    return Result(
        drill=drill.name,
        fault=drill.fault,
        requests=len(traffic.samples),
        failed_by_status=dict(Counter(str(s.status) for s in failed)),
        jobs_accepted=len(traffic.jobs),
        jobs_lost=sum(count for state, count in states.items() if state != "succeeded"),
        job_states=states,
        fault_seconds=round(fault_end - fault_start, 1),
        recovery_seconds=round(max(0.0, last_failure - fault_end), 1),
        expected_alerts=drill.expected_alerts,
        alerts_fired=_fired_between(prometheus, began, ended),
        timeline=timeline,
    )


def table(results: list[Result]) -> str:
    header = (
        "| drill | fault | lasted | requests | failed (by status) | jobs accepted / lost | recovery | expected alerts "
    )
    lines = [header + "| fired |", "|---|---|---:|---:|---|---|---:|---|---|"]
    for r in results:
        failed = ", ".join(f"{status}: {n}" for status, n in sorted(r.failed_by_status.items())) or "0"
        lines.append(
            f"| {r.drill} | {r.fault} | {r.fault_seconds:g} s | {r.requests} | {failed} "
            f"| {r.jobs_accepted} / {r.jobs_lost} "
            f"| {r.recovery_seconds:g} s | {', '.join(r.expected_alerts) or 'none'} "
            f"| {', '.join(r.alerts_fired) or 'none'} |"
        )
    return "\n".join(lines)


async def _seed(database_url: str) -> list[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id FROM items ORDER BY id LIMIT 500")
        if len(rows) < 50:
            rows = await connection.fetch(
                """INSERT INTO items (sku, name, category, price_cents, stock)
                   SELECT 'drill-' || md5(random()::text) || '-' || n, 'Drill item ' || n, 'tools', 100 + n, n
                   FROM generate_series(1, 200) AS n RETURNING id"""
            )
        return [int(row["id"]) for row in rows]
    finally:
        await connection.close()


async def main_async(arguments: argparse.Namespace) -> int:
    run_dir = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
    stack = local_stack.Stack.load(run_dir)
    if stack is None or not stack.pids:
        print(f"drill: no `make up` stack in {run_dir}: run `make up` first", file=sys.stderr)
        return 2
    chosen = [d for d in DRILLS if not arguments.only or d.name in arguments.only]
    unknown = set(arguments.only or []) - {d.name for d in DRILLS}
    if unknown:
        print(f"drill: unknown drill(s) {sorted(unknown)}; choose from {[d.name for d in DRILLS]}", file=sys.stderr)
        return 2
    context = Context(stack, dict(os.environ) | {"RUN_DIR": str(run_dir)}, arguments.fault_seconds)
    prometheus = Prometheus(f"http://127.0.0.1:{stack.prometheus_port}", slo_file.load_monitoring().api_job)
    directory = run_dir / "drills" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory.mkdir(parents=True)
    ids = await _seed(stack.database_url)
    results: list[Result] = []
    _switch_rules(stack, "test")
    try:
        for drill in chosen:
            print(f"drill: {drill.name}: {drill.fault}")
            try:
                result = await run_drill(drill, context, prometheus, arguments.rate, ids)
            except DrillError as error:
                print(f"drill: {drill.name} skipped: {error}")
                continue
            results.append(result)
            print(table([result]).splitlines()[-1])
    finally:
        _switch_rules(context.reload(), "production")
        prometheus.close()
    text = table(results)
    (directory / "drills.md").write_text(
        "# Fault drills\n\nAlert rules: test profile (monitoring/generate.py --profile test).\n\n" + text + "\n"
    )
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "rules_profile": "test",
        "drills": [asdict(r) | {"passed": r.passed} for r in results],
    }
    (directory / "drills.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    print(f"drill: results {directory / 'drills.md'}")
    if arguments.record and results:
        record(summary)
        print(f"drill: recorded in {RECORDED.relative_to(ROOT)} and the table of {RECORDED_PAGE.relative_to(ROOT)}")
    return 0 if results and all(r.passed for r in results) else 1


RECORDED = ROOT / "bench" / "results" / "drills.json"
RECORDED_PAGE = ROOT / "bench" / "results" / "drills.md"
# The recorded table sits between these lines in drills.md; the prose around it is the author's.
TABLE_START = "<!-- the recorded drills: written by `make drill RECORD=1` from drills.json -->"
TABLE_END = "<!-- end of the recorded drills -->"


def recorded_table(recorded: dict[str, Any]) -> str:
    """The table of the recorded drills (bench/results/drills.json), as drills.md shows it."""
    fields = {name for name in Result.__dataclass_fields__ if name != "timeline"}
    return table([Result(**{k: v for k, v in drill.items() if k in fields}) for drill in recorded["drills"]])


def write_recorded_table(recorded: dict[str, Any], page: Path = RECORDED_PAGE) -> None:
    """Replaces the table between TABLE_START and TABLE_END in `page` (appends both when absent)."""
    text = page.read_text() if page.exists() else "# Fault drills\n"
    block = f"{TABLE_START}\n{recorded_table(recorded)}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        before, rest = text.split(TABLE_START, 1)
        text = before + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)


def record(summary: dict[str, Any], path: Path = RECORDED) -> None:
    """Merges a run's drills into the recorded results at `path`: a drill of the same name is replaced,
    the others are kept; each drill carries the date and commit of the run it came from."""
    recorded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"drills": []}
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=False)
    stamp = {"date": summary["date"], "commit": commit.stdout.strip() or "unknown"}
    fresh = {drill["drill"]: drill | stamp for drill in summary["drills"]}
    kept = [drill for drill in recorded["drills"] if drill["drill"] not in fresh]
    order = [d.name for d in DRILLS]
    merged = sorted([*kept, *fresh.values()], key=lambda d: order.index(d["drill"]) if d["drill"] in order else 99)
    recorded.update(date=summary["date"], rules_profile=summary["rules_profile"], drills=merged)
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    if path == RECORDED:
        write_recorded_table(recorded)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run these drills: {[d.name for d in DRILLS]}")
    parser.add_argument("--rate", type=float, default=30.0, help="steady reads per second (30)")
    parser.add_argument("--fault-seconds", type=float, default=30.0, help="how long an outage lasts (30)")
    parser.add_argument("--record", action="store_true", help="also merge the results into bench/results/drills.json")
    arguments = parser.parse_args(argv)
    if not (0 < arguments.rate <= 500) or not (1 <= arguments.fault_seconds <= 300):
        parser.error("--rate must be in (0, 500] and --fault-seconds in [1, 300]")
    return asyncio.run(main_async(arguments))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
