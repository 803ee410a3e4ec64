"""The first error of a series counts: what an alert reads exists at zero before its first event.

Prometheus's `rate()` and `increase()` need two samples of a series. A series the exporter
creates at its first event (value 1) shows no increase, so a pod's first 5xx on a route, its
first slow response on a route, a worker's first dead job or lost lease, were invisible to
every ratio rule and alert (and sparse ones forever). Checked where production meets it:
the real gunicorn pod and worker process, scraped by a real Prometheus running the
generated rules. monitoring/prometheus/tests/ shows every alert firing on time from its
first errors in series that start at zero, and tests/deploy/test_monitoring.py shows that
each of those cases fails when the series start at their first event instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.kinds import KINDS
from tests.fixtures.backends import TableLock
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess
from tests.fixtures.prometheus import alert_states, prometheus, query

pytestmark = pytest.mark.e2e
PROBES = {"/livez", "/readyz", "/startupz"}
DURATION = "http_server_request_duration_seconds"


def _samples(metrics_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{metrics_url}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _served(openapi: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(route template, method, success status) for every operation the running app documents."""
    served = []
    for path, operations in openapi["paths"].items():
        if path in PROBES:
            continue
        for method, operation in operations.items():
            success = min(code for code in operation["responses"] if code.startswith("2"))
            served.append((path, method.upper(), success))
            if method == "get":
                served.append((path, "HEAD", success))
    return served


def test_every_series_an_alert_reads_exists_at_zero_before_the_first_request(
    start_api: Callable[..., ApiProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    api = start_api()
    worker = start_worker()
    samples = _samples(f"http://127.0.0.1:{api.env['METRICS_PORT']}")
    served = _served(httpx.get(f"{api.url}/openapi.json").json())
    assert len(served) >= 15
    missing = []
    for route, method, success in served:
        for status in (success, "500", "503"):
            labels = {"http_route": route, "http_request_method": method, "http_response_status_code": status}
            if samples.get((f"{DURATION}_count", frozenset(labels.items()))) != 0:
                missing.append(labels)
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "_OTHER"):
        for status in ("500", "503"):  # the rate limiter and the body limits answer before any route matched
            labels = {"http_route": "__unmatched__", "http_request_method": method, "http_response_status_code": status}
            if samples.get((f"{DURATION}_count", frozenset(labels.items()))) != 0:
                missing.append(labels)
    assert missing == [], f"{len(missing)} API series not at 0 before the first request: {missing[:5]}"

    samples = _samples(worker.url)
    wanted = [
        ("jobs_processed_total", {"kind": kind, "outcome": outcome})
        for kind in KINDS
        for outcome in ("succeeded", "failed", "dead")
    ]
    for name in ("job_leases_lost_total", "job_leases_reclaimed_total", "job_timeouts_total", "jobs_released_total"):
        wanted += [(name, {"kind": kind}) for kind in KINDS]
    wanted += [("worker_database_errors_total", {"operation": op}) for op in ("claim", "complete", "fail", "renew")]
    absent = [(name, labels) for name, labels in wanted if samples.get((name, frozenset(labels.items()))) != 0]
    assert absent == [], f"worker series not at 0 before its first job: {absent}"


async def _all_eventually(http: httpx.AsyncClient, exprs: list[str], seconds: float = 20) -> list[str]:
    """The expressions still empty after `seconds` (each polled until it has a result)."""
    deadline = time.monotonic() + seconds
    waiting = list(exprs)
    while waiting and time.monotonic() < deadline:
        waiting = [expr for expr in waiting if not await query(http, expr)]
        await asyncio.sleep(0.5)
    return waiting


async def _first_slow_then_first_5xx(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    # The list route's first response ever is slow (0.7 s, past the P99 threshold of 0.5 s) ...
    async with TableLock(db) as lock:
        slow = asyncio.create_task(api.get("/v1/items", params={"limit": 1}))
        await lock.wait_for_waiter()
        await asyncio.sleep(0.7)
    assert (await slow).status_code == 200
    # ... and the batch route's first response is a 503 (its statement outlives the timeout).
    async with TableLock(db):
        failed = await api.get("/v1/items:batch", params={"ids": "1"})
    assert failed.status_code == 503, failed.text


async def test_a_pods_first_5xx_first_slow_response_and_first_dead_job_reach_the_rules_and_alerts(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    await db.execute("INSERT INTO items (sku, name, category, price_cents, stock) VALUES ('f-1', 'F', 'c', 1, 1)")
    api = start_api(DB_STATEMENT_TIMEOUT_SECONDS="1", REQUEST_TIMEOUT_SECONDS="5", JOB_MAX_ATTEMPTS="1")
    worker = start_worker()
    api_metrics = f"127.0.0.1:{api.env['METRICS_PORT']}"
    with prometheus(tmp_path, api_metrics, worker.url.removeprefix("http://"), last_week=False) as prom:
        async with (
            httpx.AsyncClient(base_url=prom) as http,
            httpx.AsyncClient(base_url=api.url, headers=WRITER, timeout=10) as client,
        ):
            for _ in range(5):  # a pod that has served only 2xx, on another route
                assert (await client.get("/v1/items/1")).status_code == 200
            job = await client.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 0}})
            assert job.status_code == 202
            # Prometheus has seen every series at its value before the first error (at least 3 scrapes).
            seen_at_zero = ['count_over_time(up{job="catalog-api"}[1m]) >= 3', "sum(jobs_processed_total) >= 1"]
            assert await _all_eventually(http, seen_at_zero) == []

            await _first_slow_then_first_5xx(client, db)
            dead = {"kind": "cpu.burn", "params": {"milliseconds": 0, "fail_attempts": 1}}
            assert (await client.post("/v1/jobs", json=dead)).status_code == 202

            # The recording rules the alerts read count each first event (before: all stayed 0).
            rules = [
                'job:http_server_requests_errors:ratio_rate5m{job="catalog-api"} > 0',
                'job_le:http_server_requests_slower:ratio_rate5m{le="0.5"} > 0',
                'job_kind:jobs_failed:ratio_rate15m{kind="cpu.burn"} > 0',
            ]
            assert await _all_eventually(http, rules) == []
            # The 503 is 1 of 7 responses, the job 1 of 2: past every error threshold, so every error
            # alert (each burn-rate tier too), the P99 alert and the worker's failure alert go pending.
            expected = {
                *(("CatalogApiErrorBudgetBurn", short) for short in ("20s", "35s", "50s", "1m")),  # test profile
                ("CatalogApiErrorRateHigh", ""),
                ("CatalogApiLatencyP99High", ""),
                ("CatalogWorkerJobFailureRatioHigh", ""),
                ("CatalogWorkerJobsDead", ""),
            }
            seen: set[tuple[str, str]] = set()
            deadline = time.monotonic() + 20
            while not expected <= seen and time.monotonic() < deadline:
                seen |= {(labels["alertname"], labels.get("short", "")) for _, labels in await alert_states(http)}
                await asyncio.sleep(0.5)
            assert expected <= seen, f"never pending or firing: {sorted(expected - seen)}"
