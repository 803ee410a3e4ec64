"""A short, bounded load burst against a running API: the Tiltfile's `load-burst` button.

    uv run python deploy/kind/load_burst.py [--url http://127.0.0.1:8080] [--host catalog.example.com]
                                            [--seconds 30] [--concurrency 16] [--jobs 20]

Seeds a few items, then for --seconds keeps --concurrency requests in flight (item
reads and list pages, through the ingress by default) while posting --jobs `cpu.burn`
jobs for the worker tier. Enough to move the Grafana dashboards, the API's HPA
(through metrics-server) and the worker's queue; bounded (at most 300 s, 64
connections, 200 jobs) so a click never turns into a soak test. Writes need an API
key with items:write and jobs:write: API_KEY from the environment (the Tiltfile
passes the development key of deploy/kind/dev-values.yaml).

Prints the count per status code and the p50/p99 latency; exits 1 when any request
failed with a 5xx or never got an answer, or the writes were refused (a wrong key).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

MAX_SECONDS = 300.0
MAX_CONCURRENCY = 64
MAX_JOBS = 200
SEED_ITEMS = 20
JOB_MILLISECONDS = 200


@dataclass
class Summary:
    """What the burst saw: status codes (0 for no answer) and latencies of the timed reads."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    items_created: int = 0
    jobs_accepted: int = 0

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status == 0 or status >= 500)

    def succeeded(self, jobs: int) -> bool:
        """No 5xx or unanswered request, the writes were accepted (the key works), and reads were timed."""
        return (
            not self.failed and self.items_created > 0 and bool(self.latencies) and self.jobs_accepted >= min(jobs, 1)
        )

    def report(self) -> str:
        quantiles = statistics.quantiles(self.latencies, n=100) if len(self.latencies) >= 2 else [0.0] * 99
        codes = ", ".join(f"{status or 'no answer'}: {count}" for status, count in sorted(self.statuses.items()))
        return (
            f"{sum(self.statuses.values())} requests ({codes}); reads p50 {quantiles[49] * 1000:.1f} ms, "
            f"p99 {quantiles[98] * 1000:.1f} ms; {self.items_created} items created, {self.jobs_accepted} jobs accepted"
        )


async def _request(client: httpx.AsyncClient, summary: Summary, method: str, path: str, **kwargs: object) -> None:
    started = time.perf_counter()
    try:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError:
        summary.statuses[0] += 1
        return
    summary.statuses[response.status_code] += 1
    if method == "GET":
        summary.latencies.append(time.perf_counter() - started)
    elif path == "/v1/jobs" and response.status_code == 202:
        summary.jobs_accepted += 1


async def _seed(client: httpx.AsyncClient, summary: Summary) -> list[str]:
    """A few items of our own (unique SKUs per run), so reads hit rows that exist."""
    run = f"{time.time_ns():x}"
    ids: list[str] = []
    for number in range(SEED_ITEMS):
        body = {
            "sku": f"burst-{run}-{number}",
            "name": f"Load burst item {number}",
            "category": "burst",
            "price_cents": 100 + number,
            "stock": number,
        }
        response = await client.post("/v1/items", json=body)
        summary.statuses[response.status_code] += 1
        if response.status_code == 201:
            summary.items_created += 1
            ids.append(str(response.json()["id"]))
    return ids


async def burst(client: httpx.AsyncClient, seconds: float, concurrency: int, jobs: int) -> Summary:
    """Run one burst with `client` (its base URL, Host and Authorization headers already set)."""
    seconds, concurrency, jobs = min(seconds, MAX_SECONDS), min(concurrency, MAX_CONCURRENCY), min(jobs, MAX_JOBS)
    summary = Summary()
    ids = await _seed(client, summary)
    deadline = time.monotonic() + seconds
    job_interval = seconds / jobs if jobs else 0.0

    async def reader(slot: int) -> None:
        turn = slot
        while time.monotonic() < deadline:
            if ids and turn % 4:
                await _request(client, summary, "GET", f"/v1/items/{ids[turn % len(ids)]}")
            else:
                await _request(client, summary, "GET", "/v1/items", params={"limit": 50})
            turn += 1

    async def poster() -> None:
        # Every job is posted, spread over the burst (the last one about an interval before its end).
        for _ in range(jobs):
            body = {"kind": "cpu.burn", "params": {"milliseconds": JOB_MILLISECONDS}}
            await _request(client, summary, "POST", "/v1/jobs", json=body)
            await asyncio.sleep(job_interval)

    await asyncio.gather(poster(), *(reader(slot) for slot in range(concurrency)))
    return summary


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("CATALOG_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--host", default=os.environ.get("CATALOG_HOST", "catalog.example.com"))
    parser.add_argument("--seconds", type=float, default=30.0, help=f"at most {MAX_SECONDS:.0f}")
    parser.add_argument("--concurrency", type=int, default=16, help=f"at most {MAX_CONCURRENCY}")
    parser.add_argument("--jobs", type=int, default=20, help=f"cpu.burn jobs to post, at most {MAX_JOBS}")
    arguments = parser.parse_args(argv)
    if not 0 < arguments.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:.0f}]")
    if not 0 < arguments.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be in [1, {MAX_CONCURRENCY}]")
    if not 0 <= arguments.jobs <= MAX_JOBS:
        parser.error(f"--jobs must be in [0, {MAX_JOBS}]")
    return arguments


async def _main(arguments: argparse.Namespace, api_key: str) -> Summary:
    headers = {"Host": arguments.host, "Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=arguments.concurrency + 1)
    async with httpx.AsyncClient(base_url=arguments.url, headers=headers, timeout=15, limits=limits) as client:
        return await burst(client, arguments.seconds, arguments.concurrency, arguments.jobs)


def main(argv: Sequence[str]) -> int:
    arguments = _arguments(argv)
    api_key = os.environ.get("API_KEY", "")
    if not api_key:
        print("load_burst: set API_KEY to a key with items:write and jobs:write", file=sys.stderr)
        return 2
    print(f"load_burst: {arguments.seconds:.0f} s, {arguments.concurrency} connections, {arguments.url}")
    summary = asyncio.run(_main(arguments, api_key))
    print(f"load_burst: {summary.report()}")
    return 0 if summary.succeeded(arguments.jobs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
