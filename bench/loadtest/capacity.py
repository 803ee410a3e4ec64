"""`make capacity`: how many requests a second one API pod carries at the SLO, and what follows from it.

    make capacity                          # 3 runs, the recorded defaults; RECORD=1 makes it the recorded one
    PYTHONPATH=bench uv run python -m loadtest.capacity [--runs 3] [--step-seconds 20] [--values my.yaml]

1. A `make up` stack of its own (RUN_DIR .run/capacity, free ports) with ONE API pod whose
   settings are the chart's: the `catalog-settings` ConfigMap and the API container's literal
   `env` of `helm template deploy/helm/catalog [--values ...]`, so your values give your pod.
   Two deviations, both forced by one machine: TRUSTED_PROXIES is loopback (nginx runs there,
   not on the pod network) and the pod is pinned to cpu 1 while everything else (nginx,
   PostgreSQL, Redis, Prometheus, the job worker, the load generator) shares cpu 0.
2. The offered load steps up, open model: vegeta (bench/tools/vegeta.sh) sends requests at a
   fixed arrival rate whatever the answers take, through nginx, on the load test's request mix
   (bench/loadtest/locustfile.py: shoppers' list pages, hot and cold item reads, batch gets and
   exports, each from its own X-Forwarded-For address; and the API-key user's writes and job
   submissions at a fixed --write-rate). Each step runs --step-seconds; it holds the SLO when
   P99 <= latency.p99_target and the 5xx-or-no-answer share <= errors.target (service/slo.toml),
   and vegeta kept at least 95 % of the arrival rate (below that the pod's queue was holding
   requests back). Rates grow by --factor until a step fails; one more step halfway between the
   last good rate and the failed one narrows it. The knee is the highest rate that held.
3. During each step: the pod's CPU (cores: user + system time of gunicorn's master and worker
   over the step), its memory (the worker's RSS, the peak), its database pool in use (sampled
   from its /metrics every 0.5 s) and each machine CPU's busy share (cpu 0 near 100 % means
   the load side, not the pod, was the limit: the report says so).
4. The whole search runs --runs times; the report gives the median knee and the spread.
5. The worker tier: one worker pod with the chart's worker settings, pinned to cpu 1, drains a
   queue of `cpu.burn` jobs of --job-ms; jobs per second per pod, --runs times.
6. What follows (`derive`): the API HPA's CPU target, the replicas a --peak needs, the pool and
   the connection budget, the worker's jobs per replica for KEDA. Written to the report; the
   chart's comments cite the recorded run (bench/results/capacity.md).

Writes .run/capacity/<time>/report.md, capacity.json and capacity.png; with --record also
bench/results/capacity.md, capacity.json and capacity.png. Loopback only; every step is bounded
in rate (--max-rate), count and time. Exit status 0 when a knee was found (the first step held).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import yaml

from loadtest.run import seed_database
from service import slo as slo_file
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))  # `make up`'s own code runs the stack (not a package)
import servers  # noqa: E402
import stack as local_stack  # noqa: E402

RECORDED = ROOT / "bench" / "results"
CHART = ROOT / "deploy" / "helm" / "catalog"
POD_CPU = "1"  # the API pod, then the worker pod, has this core to itself...
LOAD_CPU = "0"  # ...and everything else shares the other one
KEPT_RATE_SHARE = 0.95  # a step whose achieved arrival rate fell below this share of the offered one failed
# The shoppers' request mix and weights: bench/loadtest/locustfile.py's Shopper tasks.
READ_MIX = {"list": 40, "hot": 70, "cold": 30, "batch": 20, "export": 1}
# The API-key user's (Editor's) tasks; polls read jobs submitted before the run.
WRITE_MIX = {"create": 3, "update": 4, "submit": 2, "poll": 4}
# X-Forwarded-For addresses for the shoppers: the three documentation ranges of RFC 5737, only ever
# text in a header (no traffic goes there). 762 people x the default per-client read limit
# (1,200/minute) is about 15,000 req/s, far above one pod: the limiter answers no 429 here.
ADDRESSES = [f"{net}.{host}" for net in ("192.0.2", "198.51.100", "203.0.113") for host in range(1, 255)]


class CapacityError(RuntimeError):
    """The run could not start or measure; the message names what."""


# ---------------------------------------------------------------------------------------------
# The pod's settings, from the chart


@dataclass(frozen=True)
class ChartSettings:
    api_env: dict[str, str]  # ConfigMap data + the api container's literal env (ports left out)
    worker_env: dict[str, str]
    api_cpu_request: float  # cores
    api_memory_limit: int  # bytes
    hpa_target_percent: int
    min_replicas: int
    max_replicas: int
    max_surge: int
    connection_budget: int
    worker_pool_max: int  # DB_POOL_MAX_SIZE of a worker pod (its env)
    worker_max_replicas: int
    jobs_per_replica: int


def _quantity(text: str) -> float:
    """A Kubernetes quantity ("500m", "1", "256Mi") as a number (cores or bytes)."""
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    if match is None:
        raise CapacityError(f"cannot read the quantity {text!r}")
    factor = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    return float(match.group(1)) * factor[match.group(2)]


def chart_settings(values: list[Path]) -> ChartSettings:
    """Renders the chart (helm from `make tools`) and reads the pods' settings and the scaling values."""
    helm = subprocess.run(["bash", str(ROOT / "deploy/local/tools.sh")], capture_output=True, text=True, check=False)
    if helm.returncode != 0:
        raise CapacityError(f"no helm: {helm.stderr.strip()}")
    command = [helm.stdout.strip(), "template", "capacity", str(CHART)]
    for path in values:
        command += ["--values", str(path)]
    rendered = subprocess.run(command, capture_output=True, text=True, check=False)
    if rendered.returncode != 0:
        raise CapacityError(f"helm template refused the values: {rendered.stderr.strip()}")
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]

    def one(kind: str, suffix: str) -> dict[str, Any]:
        found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
        if not found:
            raise CapacityError(f"the rendered chart has no {kind} named *{suffix}")
        chosen: dict[str, Any] = found[0]
        return chosen

    settings = {k: str(v) for k, v in one("ConfigMap", "-settings")["data"].items()}

    def container(deployment: str) -> dict[str, Any]:
        spec = one("Deployment", deployment)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if c["name"] in ("api", "worker"))

    def literal_env(spec: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: str(e["value"]) for e in spec.get("env", []) if "value" in e}

    api, worker = container("-api"), container("-worker")
    ports = ("PORT", "METRICS_PORT", "HOST")
    api_env = {k: v for k, v in (settings | literal_env(api)).items() if k not in ports}
    worker_env = {k: v for k, v in (settings | literal_env(worker)).items() if k not in ports}
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in values:
        _merge(chart_values, yaml.safe_load(path.read_text()) or {})
    api_values, worker_values = chart_values["api"], chart_values["worker"]
    return ChartSettings(
        api_env=api_env,
        worker_env=worker_env,
        api_cpu_request=_quantity(api["resources"]["requests"]["cpu"]),
        api_memory_limit=int(_quantity(api["resources"]["limits"]["memory"])),
        hpa_target_percent=int(api_values["autoscaling"]["targetCPUUtilizationPercentage"]),
        min_replicas=int(api_values["autoscaling"]["minReplicas"]),
        max_replicas=int(api_values["autoscaling"]["maxReplicas"]),
        max_surge=int(api_values["maxSurge"]),
        connection_budget=int(chart_values["database"]["connectionBudget"]),
        worker_pool_max=int(worker_env.get("DB_POOL_MAX_SIZE", "0")),
        # KEDA's or the HPA's, whichever can be higher: which one renders depends on the cluster's CRDs.
        worker_max_replicas=max(
            int(worker_values["keda"]["maxReplicas"]), int(worker_values["autoscaling"]["maxReplicas"])
        ),
        jobs_per_replica=int(worker_values["keda"]["jobsPerReplica"]),
    )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


# ---------------------------------------------------------------------------------------------
# The stack, pinned


@dataclass
class Stack:
    run_dir: Path
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.info['api_port']}"

    @property
    def pod_metrics(self) -> str:
        return f"http://127.0.0.1:{self.info['metrics_ports'][0]}/metrics"

    def pid(self, component: str) -> int:
        return int(self.info["pids"][component])


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(servers.free_port())
    return sorted(ports)


@contextmanager
def stack(chart: ChartSettings, run_dir: Path) -> Iterator[Stack]:
    """`deploy/local/stack.py up` with one API pod on the chart's settings; `down` afterwards."""
    api, pod, metrics, prometheus, worker, postgres, redis, bouncer, replica = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= chart.api_env | {
        "RUN_DIR": str(run_dir),
        "API_PORT": str(api),
        "API_POD_PORTS": str(pod),
        "API_POD_METRICS_PORTS": str(metrics),
        "PROMETHEUS_PORT": str(prometheus),
        "WORKER_METRICS_PORT": str(worker),
        "POSTGRES_PORT": str(postgres),
        "REDIS_PORT": str(redis),
        "PGBOUNCER_PORT": str(bouncer),
        "POSTGRES_REPLICA_PORT": str(replica),
        "TRUSTED_PROXIES": "127.0.0.1/32",  # nginx is on loopback here, not on the pod network
        "SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    for variable in ("PGBOUNCER", "REPLICA", "API_KEYS"):
        env.pop(variable, None)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    script = str(ROOT / "deploy" / "local" / "stack.py")
    started = subprocess.run([sys.executable, script, "up"], env=env, capture_output=True, text=True, check=False)
    try:
        if started.returncode != 0:
            raise CapacityError(f"the stack did not start:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")
        running = Stack(run_dir, env, json.loads((run_dir / "stack.json").read_text()))
        pin(running)
        yield running
    finally:
        subprocess.run([sys.executable, script, "down"], env=env, capture_output=True, check=False)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _pin(processes: list[psutil.Process], cpu: str) -> None:
    for process in processes:
        try:
            for thread in process.threads():
                os.sched_setaffinity(thread.id, {int(cpu)})
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue


def pin(running: Stack) -> None:
    """The API pod to POD_CPU; every other process of the stack (and PostgreSQL's future backends) to LOAD_CPU."""
    for component, pid in running.info["pids"].items():
        _pin(_tree(int(pid)), POD_CPU if component.startswith("api-") else LOAD_CPU)
    state = local_stack.Stack.load(running.run_dir)
    assert state is not None  # (up wrote it)
    for pidfile in (state.postgres().datadir / "postmaster.pid", state.redis().pidfile):
        if pidfile.exists():  # PostgreSQL's backends to come inherit the postmaster's affinity
            _pin(_tree(int(pidfile.read_text().split()[0])), LOAD_CPU)
    _pin([psutil.Process()], LOAD_CPU)  # this driver and what it starts (vegeta)


# ---------------------------------------------------------------------------------------------
# The request mix


@dataclass
class Fixture:
    """What the mix reads: seeded item ids, list cursors and submitted job ids."""

    api_key: str
    ids: list[int]
    cursors: list[str]
    jobs: list[str]


def seed(running: Stack, items: int) -> Fixture:
    key = (running.run_dir / "api-key").read_text().strip()
    ids = asyncio.run(seed_database(running.info["database_url"], items, "capacity"))  # make loadtest's bulk INSERT
    cursors: list[str] = []
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=running.edge, timeout=10) as http:
        cursor = ""
        for _ in range(50):  # the first 50 pages' cursors: a scrolling shopper's next pages
            page = http.get(f"/v1/items?limit=20{cursor}").json()
            if not page["next_cursor"]:
                break
            cursors.append(page["next_cursor"])
            cursor = f"&cursor={page['next_cursor']}"
        jobs = []
        for _ in range(5):
            job = http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1}}, headers=auth)
            if job.status_code != 202:
                raise CapacityError(f"POST /v1/jobs answered {job.status_code}: {job.text[:200]}")
            jobs.append(str(job.json()["id"]))
    return Fixture(key, ids, cursors, jobs)


def _target(method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> str:
    target: dict[str, Any] = {"method": method, "url": url, "header": {k: [v] for k, v in headers.items()}}
    if body is not None:
        target["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        target["header"]["Content-Type"] = ["application/json"]
    return json.dumps(target, separators=(",", ":"))


def targets(edge: str, fixture: Fixture, *, rate: float, write_rate: float, seconds: float, seed: int) -> list[str]:
    """`rate` x `seconds` vegeta targets in sending order: reads on READ_MIX's weights, one write
    (WRITE_MIX) every rate/write_rate requests; every read from the next shopper address."""
    rng = random.Random(seed)
    count = max(1, math.ceil(rate * seconds))
    every = max(1, round(rate / write_rate)) if write_rate > 0 else 0
    reads = rng.choices(list(READ_MIX), weights=list(READ_MIX.values()), k=count)
    writes = itertools.cycle(rng.sample([k for k, n in WRITE_MIX.items() for _ in range(n)], sum(WRITE_MIX.values())))
    auth = {"Authorization": f"Bearer {fixture.api_key}"}
    hot = fixture.ids[:20]
    lines = []
    for n, kind in enumerate(reads):
        if every and n % every == every - 1:
            write = next(writes)
            sku = f"cap-{seed}-{n}"
            if write == "create":
                item = {"sku": sku, "name": "Capacity", "category": "tools", "price_cents": 100, "stock": 1}
                lines.append(_target("POST", f"{edge}/v1/items", auth, item))
            elif write == "update":
                change = {"price_cents": rng.randint(100, 50_000), "stock": rng.randint(0, 500)}
                lines.append(_target("PATCH", f"{edge}/v1/items/{rng.choice(fixture.ids)}", auth, change))
            elif write == "submit":
                lines.append(
                    _target("POST", f"{edge}/v1/jobs", auth, {"kind": "cpu.burn", "params": {"milliseconds": 20}})
                )
            else:
                lines.append(_target("GET", f"{edge}/v1/jobs/{rng.choice(fixture.jobs)}", auth))
            continue
        shopper = {"X-Forwarded-For": ADDRESSES[n % len(ADDRESSES)]}
        if kind == "list":
            page = rng.randrange(len(fixture.cursors) + 1)
            cursor = f"&cursor={fixture.cursors[page - 1]}" if page else ""
            lines.append(_target("GET", f"{edge}/v1/items?limit=20{cursor}", shopper))
        elif kind == "hot":
            lines.append(_target("GET", f"{edge}/v1/items/{rng.choice(hot)}", shopper))
        elif kind == "cold":
            lines.append(_target("GET", f"{edge}/v1/items/{rng.choice(fixture.ids)}", shopper))
        elif kind == "batch":
            ids = ",".join(str(i) for i in rng.sample(fixture.ids, 10))
            lines.append(_target("GET", f"{edge}/v1/items:batch?ids={ids}", shopper))
        else:
            lines.append(_target("GET", f"{edge}/v1/items/export.csv", shopper))
    return lines


# ---------------------------------------------------------------------------------------------
# One step


@dataclass
class Step:
    offered_rps: float
    achieved_rps: float  # vegeta's arrival rate over the step
    requests: int
    p50_seconds: float
    p99_seconds: float
    error_share: float  # 5xx or no answer, of all requests
    statuses: dict[str, int]
    cpu_cores: float  # the pod's user + system CPU seconds / the step's seconds
    rss_bytes: int  # the pod worker's peak resident memory
    pool_in_use_peak: int  # db_pool_connections{state="in_use"}, the highest sample
    pool_max: int
    server_errors: dict[str, int]  # 5xx the pod logged during the step, by "status path"
    pool_waits: float  # share of pool acquires that waited more than 10 ms (db_pool_acquire_seconds)
    machine_busy: list[float]  # each CPU's busy share over the step
    held: bool = False
    why: str = ""
    # gunicorn replaced the pod's worker during the step (a MAX_REQUESTS recycle): its CPU and pool
    # numbers are partial and its latency holds the recycle's cost, so the step is repeated and this
    # one left out of the knee (kept in the report: what a recycle at this rate costs).
    recycled: bool = False


def _pod_processes(running: Stack) -> list[psutil.Process]:
    return _tree(running.pid("api-1"))


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


_POOL = re.compile(r'^db_pool_connections\{state="(in_use|max)"\} ([0-9.e+]+)$', re.M)


_ACQUIRE = re.compile(r'^db_pool_acquire_seconds_(?:bucket\{le="0\.01"\}|count) ([0-9.e+]+)$', re.M)


def _acquires(url: str) -> tuple[float, float]:
    """(acquires that took at most 10 ms, all acquires) so far, from the pod's /metrics."""
    found = _ACQUIRE.findall(httpx.get(url, timeout=5).text)
    if len(found) != 2:
        raise CapacityError(f"{url} has no db_pool_acquire_seconds histogram")
    return float(found[0]), float(found[1])


def _route(path: str) -> str:
    """`/v1/items/1025` as `/v1/items/{id}`: errors counted by route, not by item."""
    return re.sub(r"/[0-9]+(?=/|$)", "/{id}", path)


def _by_route(errors: dict[str, int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key, n in errors.items():
        status, _, path = key.partition(" ")
        grouped = f"{status} {_route(path)}"
        counts[grouped] = counts.get(grouped, 0) + n
    return counts


def _server_errors(log: Path, offset: int) -> dict[str, int]:
    """The 5xx answers in the pod's access log after `offset`, by "status path" (errors are never sampled out)."""
    counts: dict[str, int] = {}
    with log.open("rb") as file:
        file.seek(offset)
        for raw in file:
            if b'"status":5' not in raw:
                continue
            line = json.loads(raw)
            key = f"{line['status']} {_route(line['path'])}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _sample_pool(url: str, stop: threading.Event, peak: dict[str, int]) -> None:
    with httpx.Client(timeout=2) as http:
        while not stop.wait(0.5):
            try:
                text = http.get(url).text
            except httpx.HTTPError:
                continue
            for state, value in _POOL.findall(text):
                peak[state] = max(peak.get(state, 0), int(float(value)))


@dataclass(frozen=True)
class Load:
    """What every step needs: the load generator, the stack, what the mix reads, the flags, the SLO."""

    vegeta: str
    running: Stack
    fixture: Fixture
    arguments: argparse.Namespace
    slo: slo_file.Slo


def run_step(load: Load, rate: float, *, seed: int, seconds: int | None = None) -> Step:
    """One step at `rate` req/s for `seconds` (default --step-seconds), judged against the SLO."""
    vegeta, running, fixture, arguments, slo = load.vegeta, load.running, load.fixture, load.arguments, load.slo
    seconds = seconds or arguments.step_seconds
    with tempfile.TemporaryDirectory(prefix="capacity-") as scratch:
        target_file = Path(scratch) / "targets.json"
        target_file.write_text(
            "\n".join(
                targets(running.edge, fixture, rate=rate, write_rate=arguments.write_rate, seconds=seconds, seed=seed)
            )
            + "\n"
        )
        results = Path(scratch) / "results.bin"
        processes = _pod_processes(running)
        worker = max(processes, key=lambda p: p.pid)
        peak: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_pool, args=(running.pod_metrics, stop, peak), daemon=True)
        rss = 0
        fast_before, acquires_before = _acquires(running.pod_metrics)
        log = running.run_dir / "api-1.log"
        log_offset = log.stat().st_size
        cpu_before, machine_before = _cpu_seconds(processes), psutil.cpu_times(percpu=True)
        started = time.monotonic()
        sampler.start()
        attack = subprocess.Popen(
            [
                *("taskset", "-c", LOAD_CPU, vegeta, "attack", "-format", "json", "-targets", str(target_file)),
                *("-rate", f"{rate:g}/1s", "-duration", f"{seconds}s", "-timeout", "10s"),
                *("-workers", "16", "-max-workers", "400", "-connections", "400", "-output", str(results)),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        while attack.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss = max(rss, worker.memory_info().rss)
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu_after, machine_after = _cpu_seconds(processes), psutil.cpu_times(percpu=True)
        stop.set()
        sampler.join()
        fast_after, acquires_after = _acquires(running.pod_metrics)
        server_errors = _server_errors(log, log_offset)
        if attack.returncode != 0:
            raise CapacityError(f"vegeta attack exited with {attack.returncode}: {attack.stderr.read()[-1000:]}")  # type: ignore[union-attr]
        report = subprocess.run(
            [vegeta, "report", "-type", "json", str(results)], capture_output=True, text=True, check=True
        )
    summary = json.loads(report.stdout)
    statuses = {str(k): int(v) for k, v in summary["status_codes"].items()}
    requests = int(summary["requests"])
    errors = sum(n for code, n in statuses.items() if code == "0" or int(code) >= 500)
    busy = []
    for before, after in zip(machine_before, machine_after, strict=True):
        total = sum(after) - sum(before)
        idle = (after.idle + after.iowait) - (before.idle + before.iowait)
        busy.append(round(1 - idle / total, 3) if total > 0 else 0.0)
    step = Step(
        offered_rps=rate,
        achieved_rps=float(summary["rate"]),
        requests=requests,
        p50_seconds=summary["latencies"]["50th"] / 1e9,
        p99_seconds=summary["latencies"]["99th"] / 1e9,
        error_share=errors / max(requests, 1),
        statuses=statuses,
        cpu_cores=(cpu_after - cpu_before) / elapsed,
        rss_bytes=rss,
        pool_in_use_peak=peak.get("in_use", 0),
        pool_max=peak.get("max", 0),
        server_errors=server_errors,
        pool_waits=1 - (fast_after - fast_before) / max(acquires_after - acquires_before, 1),
        machine_busy=busy,
    )
    recycled = {p.pid for p in _pod_processes(running)} != {p.pid for p in processes}
    _judge(step, slo, recycled=recycled)
    return step


def _judge(step: Step, slo: slo_file.Slo, *, recycled: bool) -> None:
    """Sets `held` and `why`: P99 and errors against the SLO, arrivals kept, and no recycle."""
    reasons = []
    if step.p99_seconds > slo.p99_target:
        reasons.append(f"P99 {step.p99_seconds * 1000:.0f} ms > {slo.p99_target * 1000:.0f} ms")
    if step.error_share > slo.error_target:
        reasons.append(f"errors {step.error_share:.2%} > {slo.error_target:.1%}")
    if step.achieved_rps < KEPT_RATE_SHARE * step.offered_rps:
        reasons.append(f"arrivals {step.achieved_rps:.0f}/s < {KEPT_RATE_SHARE:.0%} of {step.offered_rps:g}")
    step.recycled = recycled
    if step.recycled:
        reasons.insert(0, "gunicorn recycled the worker (MAX_REQUESTS) during the step: repeated")
        step.cpu_cores = step.pool_waits = 0.0
    step.held, step.why = not reasons and not step.recycled, "; ".join(reasons)


def _not_ok(statuses: dict[str, int]) -> str:
    """Answers other than 2xx, as `503 x 12, 0 x 3` (0: no answer within vegeta's 10 s timeout)."""
    return ", ".join(f"{code} x {n}" for code, n in sorted(statuses.items()) if not code.startswith("2")) or "none"


def _print_step(run: int, step: Step) -> None:
    verdict = "held" if step.held else f"FAILED ({step.why})"
    print(
        f"capacity: run {run} {step.offered_rps:7.0f} req/s: P50 {step.p50_seconds * 1000:6.1f} ms, "
        f"P99 {step.p99_seconds * 1000:6.1f} ms, errors {step.error_share:.3%}, pod CPU {step.cpu_cores:.2f} cores, "
        f"RSS {step.rss_bytes / 2**20:.0f} MiB, pool {step.pool_in_use_peak}/{step.pool_max} "
        f"({step.pool_waits:.1%} waited > 10 ms), not 2xx: {_not_ok(step.statuses)} {step.server_errors or ''}, "
        f"machine CPU {'/'.join(f'{b:.0%}' for b in step.machine_busy)}: {verdict}",
        flush=True,
    )


def search(load: Load, run: int) -> list[Step]:
    """Steps from --start-rate up by --factor until one fails, then one step halfway back."""
    arguments = load.arguments
    steps: list[Step] = []
    rate = arguments.start_rate
    while rate <= arguments.max_rate:
        step = run_step(load, rate, seed=run * 1000 + len(steps))
        _print_step(run, step)
        steps.append(step)
        if step.recycled:  # once more at the same rate (a recycle comes every MAX_REQUESTS, not twice in a row)
            if len(steps) > 1 and steps[-2].recycled:
                raise CapacityError(
                    f"the pod's worker was recycled in two steps in a row at {rate:g} req/s: MAX_REQUESTS is too low "
                    "to measure a steady state (raise settings.maxRequests in your --values)"
                )
            time.sleep(arguments.pause_seconds)
            continue
        if not step.held:
            break
        time.sleep(arguments.pause_seconds)
        rate = round(rate * arguments.factor)
    held = [s.offered_rps for s in steps if s.held]
    if held and not steps[-1].held and not steps[-1].recycled:
        halfway = round((held[-1] + steps[-1].offered_rps) / 2)
        if held[-1] < halfway < steps[-1].offered_rps:
            time.sleep(arguments.pause_seconds)
            for _ in range(2):  # twice only if a recycle spoiled the first
                step = run_step(load, halfway, seed=run * 1000 + len(steps))
                _print_step(run, step)
                steps.append(step)
                if not step.recycled:
                    break
    return steps


def knee(steps: list[Step]) -> Step | None:
    """The step at the highest offered rate that held the SLO (None when none did; recycled steps never hold)."""
    held = [s for s in steps if s.held and not s.recycled]
    return max(held, key=lambda s: s.offered_rps) if held else None


# ---------------------------------------------------------------------------------------------
# The worker tier


async def _drain(database_url: str, jobs: int, milliseconds: int, within: float) -> tuple[float, int]:
    """Enqueues `jobs` cpu.burn jobs at once; returns (seconds from the first start to the last end, succeeded)."""
    from service.jobs import repository  # noqa: PLC0415 - the service package, imported where used

    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM jobs WHERE created_by = 'capacity'")
        new = repository.NewJob("cpu.burn", {"milliseconds": milliseconds}, 5, "capacity", None, None, None, None, None)
        for _ in range(jobs):
            await repository.enqueue(connection, new)
        deadline = time.monotonic() + within
        while await connection.fetchval(
            "SELECT count(*) FROM jobs WHERE created_by = 'capacity' AND state NOT IN ('succeeded', 'dead')"
        ):
            if time.monotonic() > deadline:
                raise CapacityError(f"{jobs} jobs of {milliseconds} ms did not finish within {within:.0f} s")
            await asyncio.sleep(0.2)
        row = await connection.fetchrow(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) AS seconds,"
            " count(*) FILTER (WHERE state = 'succeeded') AS succeeded FROM jobs WHERE created_by = 'capacity'"
        )
    finally:
        await connection.close()
    assert row is not None  # an aggregate always returns a row
    return float(row["seconds"]), int(row["succeeded"])


@dataclass
class WorkerRun:
    jobs: int
    milliseconds: int
    seconds: float
    succeeded: int
    slots: int

    @property
    def jobs_per_second(self) -> float:
        return self.succeeded / self.seconds if self.seconds > 0 else 0.0


def worker_runs(running: Stack, chart: ChartSettings, arguments: argparse.Namespace) -> list[WorkerRun]:
    """Stops the stack's worker, then --runs times: one chart-configured worker pinned to POD_CPU drains a queue."""
    stack_worker = psutil.Process(running.pid("worker"))
    stack_worker.terminate()
    stack_worker.wait(30)
    jobs = max(10, round(arguments.worker_seconds * 1000 / arguments.job_ms))
    port = _free_ports(1)[0]
    env = {k: v for k, v in running.env.items() if k not in ("PORT",)} | chart.worker_env
    env |= {"DATABASE_URL": running.info["database_url"], "METRICS_PORT": str(port), "LOG_LEVEL": "WARNING"}
    runs = []
    for run in range(1, arguments.runs + 1):
        process = subprocess.Popen(
            ["taskset", "-c", POD_CPU, sys.executable, "-m", "service.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not local_stack.wait_http(f"http://127.0.0.1:{port}/readyz", 30):
                raise CapacityError("the worker did not become ready (run `python -m service.worker` to see why)")
            seconds, succeeded = asyncio.run(
                _drain(running.info["database_url"], jobs, arguments.job_ms, within=arguments.worker_seconds * 10 + 60)
            )
            slots = int(env.get("WORKER_CONCURRENCY", "1") or "1")
            result = WorkerRun(jobs, arguments.job_ms, seconds, succeeded, slots)
            print(
                f"capacity: worker run {run}: {succeeded}/{jobs} cpu.burn jobs of {arguments.job_ms} ms in "
                f"{seconds:.1f} s: {result.jobs_per_second:.1f} jobs/s",
                flush=True,
            )
            runs.append(result)
        finally:
            process.terminate()
            process.wait(60)
    return runs


# ---------------------------------------------------------------------------------------------
# What follows


def derive(
    knees: list[Step], worker: list[WorkerRun], chart: ChartSettings, *, headroom: float, peak_rps: float
) -> dict[str, Any]:
    """The scaling numbers that follow from the measurement (each with its rule, for the report).

    - API CPU request: the pod's CPU at the knee, rounded up to 50 m. A pod reserves what it burns
      at the most it may carry, so a node never holds more pods than it can run at their knee
      (there is no CPU limit: one event loop uses at most about one core).
    - HPA target: 1 - headroom of that request (70 % for a headroom of 0.3): pods average that
      share of their knee CPU. The headroom covers the time the HPA needs to add a pod (a sync
      period, the pod's start and readiness) while traffic keeps growing. The rate a pod carries
      there is the knee x (1 - headroom) (its CPU grows about linearly with the rate: see the
      picture).
    - Replicas for `peak_rps`: peak / (knee x (1 - headroom)), rounded up, plus one pod to lose (a
      node or a rollout's surge), and never below the chart's minReplicas.
    - Connections: (maxReplicas + maxSurge) API pods x (DB_POOL_MAX_SIZE + 1 for /readyz), plus the
      worker pods' (templates/guards.yaml's sum), against database.connectionBudget; and the pool's
      peak use at the knee.
    - Worker: jobs per replica = jobs/s per pod x the queue wait aimed at, half the queue-wait
      alert (slo.toml monitoring.worker.queue_wait_alert_seconds): a queue at the target drains in
      that time, and the other half is left for KEDA's polling and a new pod's start.
    """
    rps = statistics.median(s.offered_rps for s in knees)
    cpu = statistics.median(s.cpu_cores for s in knees)
    request = math.ceil(round(cpu / 0.05, 6)) * 0.05
    target_percent = round((1 - headroom) * 100)
    target_cpu = request * target_percent / 100
    per_pod = rps * (1 - headroom)
    replicas = max(chart.min_replicas, math.ceil(peak_rps / per_pod) + 1)
    pool_max = int(chart.api_env.get("DB_POOL_MAX_SIZE", "10"))
    api_connections = (chart.max_replicas + chart.max_surge) * (pool_max + 1)
    # The chart's guard (templates/guards.yaml): worker pods at their maximum plus one of surge, each
    # its pool plus the LISTEN connection, and the migration job's one.
    worker_connections = (chart.worker_max_replicas + 1) * (chart.worker_pool_max + 1)
    wait = slo_file.load_monitoring().queue_wait_alert_seconds / 2
    jobs_per_second = statistics.median(w.jobs_per_second for w in worker) if worker else 0.0
    max_requests = int(chart.api_env.get("MAX_REQUESTS", Settings.model_fields["max_requests"].default))
    return {
        "headroom": headroom,
        "knee_rps": rps,
        "cpu_at_knee_cores": round(cpu, 3),
        "api_cpu_request_cores": round(request, 2),
        "chart_api_cpu_request_cores": chart.api_cpu_request,
        "hpa_target_percent": target_percent,
        "hpa_target_cpu_cores": round(target_cpu, 3),
        "chart_hpa_target_percent": chart.hpa_target_percent,
        "rps_per_pod_at_target": round(per_pod),
        "peak_rps": peak_rps,
        "replicas_for_peak": replicas,
        "chart_max_replicas": chart.max_replicas,
        "rps_at_chart_max_replicas": round((chart.max_replicas - 1) * per_pod),
        "max_requests": max_requests,
        "minutes_between_recycles_at_target": round(max_requests / per_pod / 60, 1) if max_requests else None,
        "pool_max": pool_max,
        "pool_in_use_peak_at_knee": max(s.pool_in_use_peak for s in knees),
        "api_connections_at_max": api_connections,
        "connections_at_max": api_connections + worker_connections + 1,
        "connection_budget": chart.connection_budget,
        "worker_jobs_per_second": round(jobs_per_second, 1),
        "worker_job_ms": worker[0].milliseconds if worker else None,
        "queue_wait_target_seconds": wait,
        "jobs_per_replica": math.floor(jobs_per_second * wait),
        "chart_jobs_per_replica": chart.jobs_per_replica,
    }


# ---------------------------------------------------------------------------------------------
# Report


def draw(runs: list[list[Step]], slo: slo_file.Slo, path: Path) -> None:
    """Latency (P50, P99) and the pod's CPU against the offered rate, one line per run."""
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for index, steps in enumerate(runs, start=1):
        ordered = sorted((s for s in steps if not s.recycled), key=lambda s: s.offered_rps)
        rates = [s.offered_rps for s in ordered]
        (line,) = latency.plot(rates, [s.p99_seconds * 1000 for s in ordered], marker="o", label=f"P99, run {index}")
        recycled = [s for s in steps if s.recycled]
        if recycled:
            latency.scatter(
                [s.offered_rps for s in recycled],
                [s.p99_seconds * 1000 for s in recycled],
                marker="x",
                color=line.get_color(),
                label=f"P99 of a step with a MAX_REQUESTS recycle, run {index}",
            )
        latency.plot(rates, [s.p50_seconds * 1000 for s in ordered], marker=".", linestyle=":", color=line.get_color())
        cpu.plot(rates, [s.cpu_cores for s in ordered], marker="o", color=line.get_color(), label=f"run {index}")
        best = knee(steps)
        if best is not None:
            latency.axvline(best.offered_rps, color=line.get_color(), linewidth=0.8, alpha=0.5)
            cpu.axvline(best.offered_rps, color=line.get_color(), linewidth=0.8, alpha=0.5)
    latency.axhline(slo.p99_target * 1000, color="red", linestyle="--", label="P99 target")
    latency.axhline(slo.p50_target * 1000, color="orange", linestyle="--", label="P50 target")
    latency.set_yscale("log")
    latency.set_xlabel("offered load (req/s, open model)")
    latency.set_ylabel("latency (ms; dotted: P50)")
    latency.set_title("Latency against offered load (one API pod)")
    latency.legend(fontsize=7)
    cpu.set_xlabel("offered load (req/s)")
    cpu.set_ylabel("pod CPU (cores)")
    cpu.set_title("The pod's CPU (vertical lines: each run's knee)")
    cpu.set_ylim(bottom=0)
    cpu.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    middle = statistics.median(values)
    spread = (max(values) - min(values)) / middle if middle else 0.0
    return f"median {middle:,.0f}, min {min(values):,.0f}, max {max(values):,.0f} (spread {spread:.0%})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if n == 0 or not rows or not rows[0][n][:1].isdigit() else "---:" for n in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def _knee_table(held: list[Step]) -> list[str]:
    def row(name: str, values: list[float], form: str) -> list[str]:
        return [name, *(format(v, form) for v in (statistics.median(values), min(values), max(values)))]

    return _table(
        ["at the knee", "median", "min", "max"],
        [
            row("req/s", [k.offered_rps for k in held], ",.0f"),
            row("pod CPU (cores)", [k.cpu_cores for k in held], ".2f"),
            row("pod memory, worker RSS (MiB)", [k.rss_bytes / 2**20 for k in held], ".0f"),
            row("P50 (ms)", [k.p50_seconds * 1000 for k in held], ".1f"),
            row("P99 (ms)", [k.p99_seconds * 1000 for k in held], ".1f"),
            row("pool in use, peak", [float(k.pool_in_use_peak) for k in held], ".0f"),
        ],
    )


def _derived_table(d: dict[str, Any]) -> list[str]:
    request_rule = f"the pod's CPU at the knee, {d['cpu_at_knee_cores']:.2f} cores, rounded up to 50 m"
    target_rule = (
        f"1 - headroom {d['headroom']:.0%} of the request: the HPA adds pods when they average "
        f"{d['hpa_target_cpu_cores']:.2f} cores"
    )
    carries = f"maxReplicas {d['chart_max_replicas']} (carries {d['rps_at_chart_max_replicas']:,} req/s, one spare)"
    worker_rule = (
        f"{d['worker_jobs_per_second']} jobs/s per pod ({d['worker_job_ms']} ms jobs) x "
        f"{d['queue_wait_target_seconds']:g} s (half the queue-wait alert)"
    )
    return _table(
        ["", "rule", "value", "chart default"],
        [
            [
                "API CPU request",
                request_rule,
                f"{round(d['api_cpu_request_cores'] * 1000)}m",
                f"{round(d['chart_api_cpu_request_cores'] * 1000)}m",
            ],
            ["API HPA CPU target", target_rule, f"{d['hpa_target_percent']} %", f"{d['chart_hpa_target_percent']} %"],
            ["req/s per pod at that target", "knee x (1 - headroom)", f"{d['rps_per_pod_at_target']:,}", ""],
            [
                f"API replicas for a peak of {d['peak_rps']:,.0f} req/s",
                "ceil(peak / per-pod rate) + 1 spare, at least minReplicas",
                str(d["replicas_for_peak"]),
                carries,
            ],
            [
                "a MAX_REQUESTS recycle, per pod at that rate",
                f"MAX_REQUESTS {d['max_requests']:,} / per-pod rate",
                f"every {d['minutes_between_recycles_at_target']} min" if d["max_requests"] else "never",
                "",
            ],
            [
                "database pool",
                "peak in use at the knee, of DB_POOL_MAX_SIZE",
                f"{d['pool_in_use_peak_at_knee']} of {d['pool_max']}",
                "",
            ],
            [
                "API connections at maxReplicas",
                "(maxReplicas + maxSurge) x (DB_POOL_MAX_SIZE + 1 for /readyz)",
                f"{d['api_connections_at_max']} ({d['connections_at_max']} with the worker's and the migration's)",
                f"connectionBudget {d['connection_budget']} (the chart refuses more)",
            ],
            [
                "worker jobs per replica (KEDA)",
                worker_rule,
                str(d["jobs_per_replica"]),
                str(d["chart_jobs_per_replica"]),
            ],
        ],
    )


def markdown(result: dict[str, Any], runs: list[list[Step]], workers: list[WorkerRun]) -> str:
    """The report: the knee with its spread, what follows, the worker tier, every step."""
    knees = [knee(steps) for steps in runs]
    held = [k for k in knees if k is not None]
    slo = result["slo"]
    found = ", ".join(f"{k.offered_rps:,.0f}" if k else "none" for k in knees)
    cpu0 = [k.machine_busy[0] for k in held]
    bound = (
        f"At the knees cpu {LOAD_CPU} (nginx, PostgreSQL, Redis, the load generator) was "
        f"{min(cpu0):.0%}-{max(cpu0):.0%} busy: "
        + (
            "near saturation, so part of the limit may be this machine's load side rather than the pod."
            if max(cpu0) > 0.9
            else "not saturated, so the limit was the pod."
        )
    )
    steps = _table(
        [
            "run",
            "offered req/s",
            "achieved",
            "P50 ms",
            "P99 ms",
            "errors",
            "pod CPU",
            "RSS MiB",
            "pool",
            "CPU 0 / 1",
            "SLO",
        ],
        [
            [
                str(n),
                f"{s.offered_rps:,.0f}",
                f"{s.achieved_rps:,.0f}",
                f"{s.p50_seconds * 1000:.1f}",
                f"{s.p99_seconds * 1000:.1f}",
                f"{s.error_share:.2%}",
                _not_ok(s.statuses) + "".join(f"; {k} x {n}" for k, n in sorted(_by_route(s.server_errors).items())),
                "n/a (recycle)" if s.recycled else f"{s.cpu_cores:.2f}",
                f"{s.rss_bytes / 2**20:.0f}",
                f"{s.pool_in_use_peak}/{s.pool_max}",
                "n/a" if s.recycled else f"{s.pool_waits:.1%}",
                " / ".join(f"{b:.0%}" for b in s.machine_busy),
                "held" if s.held else f"missed: {s.why}",
            ]
            for n, run in enumerate(runs, start=1)
            for s in run
        ],
    )
    worker = _table(
        ["run", "succeeded", "job ms", "slots", "seconds", "jobs/s"],
        [
            [
                str(n),
                f"{w.succeeded}/{w.jobs}",
                str(w.milliseconds),
                str(w.slots),
                f"{w.seconds:.1f}",
                f"{w.jobs_per_second:.1f}",
            ]
            for n, w in enumerate(workers, start=1)
        ],
    )
    lines = [
        f"# Capacity of one API pod ({result['date']})",
        "",
        result["how"],
        "",
        "## The knee",
        "",
        f"The highest offered rate that held the SLO (P99 <= {slo['p99_target_ms']:.0f} ms, errors <= "
        f"{slo['error_target']:.1%}) for a full step, in each of {len(runs)} runs: {found} req/s; "
        f"{_spread([k.offered_rps for k in held])}.",
        "",
        *_knee_table(held),
        "",
        bound,
        "",
        "![latency and CPU against offered load](capacity.png)",
        "",
        "## What follows (the chart's defaults cite this)",
        "",
        *_derived_table(result["derived"]),
        "",
        "## The worker tier",
        "",
        "One worker pod (the chart's worker settings, pinned to cpu 1) drains a queue of `cpu.burn` jobs.",
        "",
        *worker,
        "",
        "## Every step",
        "",
        *steps,
    ]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="whole searches, for the spread (3)")
    parser.add_argument("--start-rate", type=float, default=150.0, help="the first step's req/s (150)")
    parser.add_argument("--factor", type=float, default=1.3, help="each step's rate over the last's (1.3)")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="never offer more than this (5000 req/s)")
    parser.add_argument("--step-seconds", type=int, default=20, help="how long each step runs (20)")
    parser.add_argument("--pause-seconds", type=float, default=3.0, help="quiet between steps (3)")
    parser.add_argument(
        "--write-rate", type=float, default=1.5, help="the API-key user's req/s (1.5, as make loadtest)"
    )
    parser.add_argument("--headroom", type=float, default=0.3, help="share of the knee kept free (0.3)")
    parser.add_argument("--peak", type=float, default=2000.0, help="the peak req/s to size replicas for (2000)")
    parser.add_argument(
        "--job-ms", type=int, default=20, help="cpu.burn job size for the worker (20, as make loadtest)"
    )
    parser.add_argument("--worker-seconds", type=float, default=15.0, help="queued work per worker run (15 s)")
    parser.add_argument("--values", type=Path, action="append", default=[], help="your chart values (repeatable)")
    parser.add_argument("--seed-items", type=int, default=2000, help="items in the catalog (2000)")
    parser.add_argument("--record", action="store_true", help="also make this the recorded run (bench/results/)")
    parser.add_argument(
        "--redraw", type=Path, metavar="DIR", help="only write DIR's report again from its capacity.json (no run)"
    )
    arguments = parser.parse_args(argv)
    if arguments.runs < 1 or arguments.step_seconds < 2 or arguments.factor <= 1 or arguments.seed_items < 20:
        parser.error("--runs >= 1, --step-seconds >= 2, --factor > 1 and --seed-items >= 20, please")
    if not 0 <= arguments.headroom < 1:
        parser.error("--headroom is a share: 0 <= headroom < 1")
    for path in arguments.values:
        if not path.is_file():
            parser.error(f"--values {path}: no such file")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like an error, so the stack's `down` still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if arguments.redraw:
        try:
            print(redraw(arguments.redraw, arguments.values))
        except (CapacityError, OSError, KeyError, TypeError) as error:
            print(f"capacity: cannot redraw {arguments.redraw}: {error!r}", file=sys.stderr)
            return 2
        return 0
    return measure(arguments, argv)


def measure(arguments: argparse.Namespace, argv: list[str]) -> int:
    """The run: the stack, the searches, the worker, the report (exit status as `main`'s)."""
    slo = slo_file.load()
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("capacity: needs taskset (util-linux) and 2 CPUs: the pod gets one, the rest the other", file=sys.stderr)
        return 2
    build = subprocess.run(["bash", str(ROOT / "bench/tools/vegeta.sh")], capture_output=True, text=True, check=False)
    if build.returncode != 0:
        print(f"capacity: {build.stderr.strip()}", file=sys.stderr)
        return 2
    vegeta = build.stdout.strip()
    stamp = datetime.now(UTC)
    run_root = Path(os.environ.get("RUN_DIR", ROOT / ".run")) / "capacity"
    directory = run_root / "results" / stamp.strftime("%Y%m%dT%H%M%SZ")
    try:
        chart = chart_settings(arguments.values)
        with stack(chart, run_root / "stack") as running:
            fixture = seed(running, arguments.seed_items)
            print(f"capacity: one API pod at {running.edge} (nginx) on cpu {POD_CPU}; {len(fixture.ids)} items")
            load = Load(vegeta, running, fixture, arguments, slo)
            run_step(load, arguments.start_rate, seed=0, seconds=5)  # a warm-up, discarded
            runs = []
            for run in range(1, arguments.runs + 1):
                runs.append(search(load, run))
                time.sleep(arguments.pause_seconds)
            workers = worker_runs(running, chart, arguments)
    except (CapacityError, OSError, subprocess.SubprocessError, asyncpg.PostgresError, httpx.HTTPError) as error:
        print(f"capacity: {error}", file=sys.stderr)
        return 2
    knees = [k for k in (knee(steps) for steps in runs) if k is not None]
    if not knees:
        print(f"capacity: no step held the SLO, not even {arguments.start_rate:g} req/s: lower --start-rate")
        return 1
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    how = (
        f"`make capacity` ({' '.join(argv) or 'defaults'}) at commit {git.stdout.strip() or 'unknown'}, "
        f"{os.cpu_count()} CPUs shared with nothing else we started; the pod pinned to cpu {POD_CPU}, the rest on "
        f"cpu {LOAD_CPU}; {arguments.runs} runs, steps of {arguments.step_seconds} s from "
        f"{arguments.start_rate:g} req/s x {arguments.factor:g}, open model (vegeta), through nginx, the load "
        f"test's mix with {arguments.write_rate:g} req/s of writes; settings from the chart"
        + (f" with {', '.join(str(p) for p in arguments.values)}" if arguments.values else "'s defaults")
        + "."
    )
    result = {
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "how": how,
        "headroom": arguments.headroom,
        "peak_rps": arguments.peak,
        "runs": [[asdict(s) for s in steps] for steps in runs],
        "worker": [asdict(w) for w in workers],
    }
    directory.mkdir(parents=True)
    text = write_report(directory, result, chart)
    print(text)
    print(f"capacity: report in {directory}")
    if arguments.record:
        for name in ("capacity.png", "capacity.json"):
            shutil.copy(directory / name, RECORDED / name)
        (RECORDED / "capacity.md").write_text(text)
        print("capacity: recorded in bench/results/capacity.md, capacity.json and capacity.png")
    return 0


def write_report(directory: Path, measured: dict[str, Any], chart: ChartSettings) -> str:
    """From a run's measurements (`measured`: date, how, headroom, peak_rps, runs, worker) writes
    capacity.json (with the SLO, the knees and what `derive` gives), capacity.png and report.md in
    `directory`; returns the report's text. `redraw` calls it again on a recorded run."""
    slo = slo_file.load()
    runs = [[Step(**step) for step in steps] for steps in measured["runs"]]
    workers = [WorkerRun(**{k: v for k, v in w.items() if k != "jobs_per_second"}) for w in measured["worker"]]
    knees = [k for k in (knee(steps) for steps in runs) if k is not None]
    result = measured | {
        "slo": {"p99_target_ms": slo.p99_target * 1000, "error_target": slo.error_target},
        "knees_rps": [k.offered_rps for k in knees],
        "worker": [asdict(w) | {"jobs_per_second": w.jobs_per_second} for w in workers],
        "derived": derive(knees, workers, chart, headroom=measured["headroom"], peak_rps=measured["peak_rps"]),
    }
    draw(runs, slo, directory / "capacity.png")
    (directory / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, runs, workers)
    (directory / ("capacity.md" if directory.resolve() == RECORDED.resolve() else "report.md")).write_text(text)
    return text


def redraw(directory: Path, values: list[Path]) -> str:
    """Writes a run's report and picture again from its capacity.json (after a change to the report, the
    derivation or the chart's defaults), with the chart's current settings."""
    measured = json.loads((directory / "capacity.json").read_text())
    return write_report(directory, measured, chart_settings(values))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
