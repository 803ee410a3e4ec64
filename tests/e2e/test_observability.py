"""The dashboards and alerts against a real Prometheus scraping a real API and worker.

One run: an API process and a worker, a Prometheus (Debian's) scraping both
every second with the generated rules loaded in their test profile (the same
expressions, windows shortened: monitoring/generate.py --profile test), and a
week-old hour of API traffic backfilled with promtool so the "same window a
week earlier" queries have something to compare with. A bounded mix of
traffic flows: cache hits and misses, lists, 404s, jobs that succeed and jobs
that die, requests slowed by a table lock, 503s (statement timeouts) and 500s
(a column renamed under the running app). Then every dashboard panel query,
every template variable query and every recording rule runs through
Prometheus's HTTP API: none may fail, none may be empty. Along the way the
error-rate alert must reach `firing`.
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

from monitoring import queries
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess
from tests.fixtures.prometheus import alert_states, prometheus, query

pytestmark = pytest.mark.e2e
ITEMS = 300
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval for a 1 s scrape, with room for a missed scrape


class Traffic:
    """A steady mix of requests and jobs from a few concurrent clients, until stopped."""

    def __init__(self, api: ApiProcess) -> None:
        self.http = httpx.AsyncClient(base_url=api.url, headers=WRITER, timeout=10)
        self.statuses: dict[int, int] = {}
        self.stopped = asyncio.Event()
        self.turn = 0

    async def _one(self, method: str, path: str, **kwargs: Any) -> None:
        response = await self.http.request(method, path, **kwargs)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1

    async def run(self) -> None:
        while not self.stopped.is_set():
            self.turn += 1
            n = self.turn
            requests = [
                self._one("GET", f"/v1/items/{1 + n % 20}"),  # hot: cache hits
                self._one("GET", f"/v1/items/{21 + n % (ITEMS - 20)}"),  # cooler: misses, PostgreSQL
                self._one("GET", f"/v1/items/{10_000 + n}"),  # 404
                self._one("GET", "/v1/items", params={"limit": 10}),
            ]
            if n % 10 == 0:
                burn = {"kind": "cpu.burn", "params": {"milliseconds": 20, "fail_attempts": 1 if n % 30 == 0 else 0}}
                requests.append(self._one("POST", "/v1/jobs", json=burn))
            if n % 40 == 0:
                requests.append(self._one("POST", "/v1/jobs", json={"kind": "catalog.report", "params": {}}))
            await asyncio.gather(*requests)
            await asyncio.sleep(0.02)

    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


async def _seed(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO items (sku, name, category, price_cents, stock)
           SELECT 'obs-' || n, 'Item ' || n, 'cat-' || (n % 7), n * 13, n % 50 FROM generate_series(1, $1) AS n""",
        ITEMS,
    )


async def _inject_faults(db: asyncpg.Connection, traffic: Traffic) -> None:
    """Slow requests, 503s and 500s, then back to health."""
    for _ in range(3):  # slow but successful: reads wait 0.15 s on a lock
        async with TableLock(db):
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
    for _ in range(4):  # reads outlive the statement timeout: 503
        async with TableLock(db):
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)
    # A schema change the code does not expect: an unhandled error, answered 500.
    await db.execute("ALTER TABLE items RENAME COLUMN name TO title")
    await asyncio.sleep(1.0)
    await db.execute("ALTER TABLE items RENAME COLUMN title TO name")
    assert traffic.errors() > 0


async def _alert_state(http: httpx.AsyncClient, name: str) -> str | None:
    states = {state for state, labels in await alert_states(http) if labels["alertname"] == name}
    return "firing" if "firing" in states else next(iter(states), None)


async def test_every_panel_query_and_recording_rule_has_data_and_the_error_alert_fires(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    backends: Backends,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    await _seed(db)
    api = start_api(
        DB_STATEMENT_TIMEOUT_SECONDS="0.3",
        REQUEST_TIMEOUT_SECONDS="1",
        RATE_LIMIT_READS="1000000/minute",
        CACHE_L1_TTL_SECONDS="0.5",
    )
    worker = start_worker()
    api_metrics = f"127.0.0.1:{api.env['METRICS_PORT']}"
    worker_metrics = worker.url.removeprefix("http://")
    with prometheus(tmp_path, api_metrics, worker_metrics) as prom:
        traffic = Traffic(api)
        running = asyncio.create_task(traffic.run())
        try:
            await asyncio.sleep(5)  # healthy traffic first
            await _inject_faults(db, traffic)
            async with httpx.AsyncClient(base_url=prom) as http:
                deadline = time.monotonic() + 90
                state = None
                while time.monotonic() < deadline:
                    state = await _alert_state(http, "CatalogApiErrorRateHigh")
                    if state == "firing":
                        break
                    await _inject_faults(db, traffic)  # keep the 5xx ratio above 1 %
                assert state == "firing", f"error-rate alert never fired; statuses {traffic.statuses}"
        finally:
            traffic.stopped.set()
            await running
            await traffic.http.aclose()

        values = {"__rate_interval": RATE_INTERVAL}
        async with httpx.AsyncClient(base_url=prom) as http:
            empty = []
            checked = 0
            for where, expr in [*queries.panel_queries(), *queries.recording_rules("test")]:
                checked += 1
                if not await query(http, queries.substitute(expr, values)):
                    empty.append(f"{where}: {expr}")
            for where, definition in queries.variable_queries():
                metric, label = definition.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
                found = await http.get(f"/api/v1/label/{label}/values", params={"match[]": queries.substitute(metric)})
                checked += 1
                if not found.json()["data"]:
                    empty.append(f"{where}: {definition}")
    assert checked > 80
    assert empty == [], "\n".join(empty)
    assert traffic.statuses.get(404, 0) > 0
    assert traffic.statuses.get(503, 0) > 0
    assert traffic.statuses.get(500, 0) > 0
