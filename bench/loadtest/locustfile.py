"""Locust scenarios for the catalog API, shaped like its real traffic (run by `make loadtest`).

Two kinds of user, each paced at a constant rate so the offered load is known:
- `Shopper` (most users, no API key): browses the list with cursor pagination,
  reads hot items (a small set everyone wants: the cache's case) and cold ones
  (anywhere in the catalog: the database's case), batch-gets ten ids, and now
  and then downloads the CSV export.
- `Editor` (one user, the API key): creates and edits items and submits jobs
  (mostly a 20 ms `cpu.burn`, sometimes a `catalog.report`), then polls each
  job until it ends. Its rate stays under one key's write limit
  (RATE_LIMIT_WRITES, 120/minute by default), as one real integration would.

Every request is one task, so the offered rate is requests per second.

Shoppers stand for many different people: each sends its own
`X-Forwarded-For` address from 198.51.100.0/24 (TEST-NET-2, RFC 5737: a
documentation range, only ever text in a header here; no traffic goes there).
An edge that trusts the load generator (nginx in `make up` trusts loopback)
passes it on, so the per-client rate limit applies per simulated person, as it
would in production. Against an edge that overwrites the header every shopper
shares one address and meets the read limit: the report counts those 429s
apart from errors.

Configured by the driver (bench/loadtest/run.py) through LOADTEST_* variables,
so `locust -f` on this file alone also works; see `_setting` below for each.
A status >= 500 or no response is a failure; so is any other status a scenario
does not expect (a 404 for an item that exists is a bug, not load).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.env import Environment


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"LOADTEST_{name}", default)


READ_RATE = float(_setting("READ_RATE", "50"))  # requests/s over all shoppers
WRITE_RATE = float(_setting("WRITE_RATE", "1.5"))  # requests/s of the one editor (writes and job polls)
SHOPPERS = max(1, int(_setting("SHOPPERS", "10")))
API_KEY = _setting("API_KEY", "")
IDS: list[int] = json.loads(Path(_setting("IDS_FILE", "")).read_text()) if _setting("IDS_FILE", "") else []
HOT_IDS = IDS[:20]  # the same few items for everyone: cache hits after the first read
OUTCOME_FILE = _setting("OUTCOME_FILE", "")  # where status counts and job ids are written at the end
FORWARDED_FOR = _setting("FORWARDED_FOR", "1") == "1"

_lock = threading.Lock()
_statuses: Counter[tuple[str, int]] = Counter()  # (request name, status) -> count; status 0 = no response
_jobs: list[str] = []  # every job the editor submitted, checked by the driver after the run


def _record(name: str, status: int) -> None:
    with _lock:
        _statuses[(name, status)] += 1


def _write_outcome(environment: Environment, **_: Any) -> None:
    if not OUTCOME_FILE:
        return
    with _lock:
        statuses = [{"name": name, "status": status, "count": count} for (name, status), count in _statuses.items()]
        Path(OUTCOME_FILE).write_text(json.dumps({"statuses": statuses, "jobs": list(_jobs)}))


events.quitting.add_listener(_write_outcome)  # type: ignore[no-untyped-call]  # locust leaves it unannotated


class _Paced(FastHttpUser):
    abstract = True

    def _get(self, path: str, name: str, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        return self._call("GET", path, name, expect, **kwargs)

    def _call(self, method: str, path: str, name: str, expect: tuple[int, ...], **kwargs: Any) -> Any:
        """One request; a status outside `expect` marks it failed. Returns the parsed JSON body or None."""
        with self.client.request(method, path, name=name, catch_response=True, **kwargs) as response:
            status = response.status_code or 0
            _record(name, status)
            if status not in expect:
                response.failure(f"HTTP {status}" if status else f"no response: {response.error}")
                return None
            content_type = response.headers.get("content-type", "") if response.headers else ""
            return response.json() if content_type.startswith("application/json") else None


class Shopper(_Paced):
    """A reader: browse, hot and cold item reads, batch gets, an occasional export."""

    wait_time = constant_throughput(READ_RATE / SHOPPERS)
    _next_address = 0

    def on_start(self) -> None:
        self.cursor: str | None = None
        self.pages = 0
        Shopper._next_address += 1
        address = f"198.51.100.{Shopper._next_address % 254 + 1}"
        self.headers = {"X-Forwarded-For": address} if FORWARDED_FOR else {}

    @task(40)
    def browse(self) -> None:
        """One page of the list, following the cursor for up to five pages, as a person scrolling would."""
        if self.cursor is None:
            page = self._get("/v1/items?limit=20", "GET /v1/items (first page)", headers=self.headers)
        else:
            page = self._get(
                f"/v1/items?limit=20&cursor={self.cursor}", "GET /v1/items (next page)", headers=self.headers
            )
        self.pages += 1
        self.cursor = page.get("next_cursor") if page and self.pages < 5 else None
        if self.cursor is None:
            self.pages = 0

    @task(70)
    def hot_item(self) -> None:
        if HOT_IDS:
            self._get(f"/v1/items/{random.choice(HOT_IDS)}", "GET /v1/items/{id} (hot)", headers=self.headers)

    @task(30)
    def cold_item(self) -> None:
        if IDS:
            self._get(f"/v1/items/{random.choice(IDS)}", "GET /v1/items/{id} (cold)", headers=self.headers)

    @task(20)
    def batch(self) -> None:
        if IDS:
            ids = ",".join(str(item) for item in random.sample(IDS, min(10, len(IDS))))
            self._get(f"/v1/items:batch?ids={ids}", "GET /v1/items:batch", headers=self.headers)

    @task(1)
    def export(self) -> None:
        self._get("/v1/items/export.csv", "GET /v1/items/export.csv", headers=self.headers)


class Editor(_Paced):
    """The one API-key holder: creates and edits items, submits jobs and polls them until they end."""

    fixed_count = 1
    wait_time = constant_throughput(WRITE_RATE)

    def on_start(self) -> None:
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.created: list[int] = []
        self.pending: list[str] = []
        self.serial = 0

    @task(3)
    def create(self) -> None:
        self.serial += 1
        body = {
            "sku": f"lt-{os.getpid()}-{id(self)}-{self.serial}",
            "name": f"Load test item {self.serial}",
            "category": random.choice(["tools", "garden", "kitchen"]),
            "price_cents": random.randint(100, 50_000),
            "stock": random.randint(0, 500),
        }
        item = self._call("POST", "/v1/items", "POST /v1/items", (201,), json=body, headers=self.auth)
        if item:
            self.created.append(int(item["id"]))

    @task(4)
    def update(self) -> None:
        pool = self.created or IDS
        if pool:
            item = random.choice(pool)
            body = {"price_cents": random.randint(100, 50_000), "stock": random.randint(0, 500)}
            self._call("PATCH", f"/v1/items/{item}", "PATCH /v1/items/{id}", (200,), json=body, headers=self.auth)

    @task(2)
    def submit_job(self) -> None:
        if random.random() < 0.1:
            body: dict[str, Any] = {"kind": "catalog.report", "params": {"percentiles": [50, 90, 99]}}
        else:
            body = {"kind": "cpu.burn", "params": {"milliseconds": 20}}
        job = self._call("POST", "/v1/jobs", "POST /v1/jobs", (202,), json=body, headers=self.auth)
        if job:
            with _lock:
                _jobs.append(str(job["id"]))
            self.pending.append(str(job["id"]))

    @task(4)
    def poll_job(self) -> None:
        if not self.pending:
            return
        job_id = self.pending[0]
        job = self._get(f"/v1/jobs/{job_id}", "GET /v1/jobs/{id}", headers=self.auth)
        if job is None or job["state"] in {"succeeded", "dead", "cancelled"}:
            self.pending.pop(0)
