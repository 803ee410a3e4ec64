"""Two API processes sharing one PostgreSQL and one Redis, as two pods do."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fixtures.backends import Backends, dedicated_backends
from tests.fixtures.keys import WRITER, WRITER_KEY
from tests.fixtures.processes import ApiProcess, lines_where

pytestmark = pytest.mark.e2e

ITEM = {"sku": "shared-1", "name": "Shared", "category": "c", "price_cents": 10, "stock": 1}
ITEM_LOOKUP = re.compile(r"execute [^:]*: SELECT .* FROM items WHERE id = \$1")


@pytest.fixture
def logged_backends() -> Iterator[Backends]:
    with dedicated_backends("log_statement=all") as backends:
        yield backends


def item_queries(backends: Backends) -> int:
    assert backends.postgres is not None
    return len(ITEM_LOOKUP.findall(backends.postgres.logfile.read_text()))


def test_a_thousand_reads_across_two_pods_cost_one_query_and_writes_are_seen_at_once(
    start_api: Callable[..., ApiProcess], logged_backends: Backends
) -> None:
    urls = {"DATABASE_URL": logged_backends.database_url, "REDIS_URL": logged_backends.redis_url}
    first, second = start_api(**urls), start_api(**urls)
    with httpx.Client(headers=WRITER) as http:
        item_id = http.post(f"{first.url}/v1/items", json=ITEM).json()["id"]
        before = item_queries(logged_backends)
        for n in range(1000):
            response = http.get(f"{(first, second)[n % 2].url}/v1/items/{item_id}")
            assert response.status_code == 200
        assert item_queries(logged_backends) - before == 1

        # Both pods hold the item in their L1 now; a write through one is seen through the other.
        assert http.patch(f"{first.url}/v1/items/{item_id}", json={"name": "Renamed"}).status_code == 200
        assert http.get(f"{second.url}/v1/items/{item_id}").json()["name"] == "Renamed"
        assert http.get(f"{first.url}/v1/items/{item_id}").json()["name"] == "Renamed"
        assert http.delete(f"{second.url}/v1/items/{item_id}").status_code == 204
        assert http.get(f"{first.url}/v1/items/{item_id}").status_code == 404


def test_the_rate_limit_is_shared_by_all_pods_and_fails_open_without_redis(
    start_api: Callable[..., ApiProcess],
) -> None:
    with dedicated_backends() as backends:
        urls = {"DATABASE_URL": backends.database_url, "REDIS_URL": backends.redis_url}
        limits = {"RATE_LIMIT_READS": "10/hour", "BREAKER_RESET_SECONDS": "30"}
        first, second = start_api(**urls, **limits), start_api(**urls, **limits)
        with httpx.Client() as http:
            responses = [http.get(f"{(first, second)[n % 2].url}/v1/items") for n in range(12)]
            assert [r.status_code for r in responses] == [200] * 10 + [429] * 2
            assert [int(r.headers["x-ratelimit-remaining"]) for r in responses[:10]] == list(range(9, -1, -1))
            assert {r.headers["x-ratelimit-limit"] for r in responses} == {"10"}
            rejected = responses[-1]
            assert rejected.headers["content-type"] == "application/problem+json"
            assert 0 < int(rejected.headers["retry-after"]) <= 3600
            assert rejected.headers["retry-after"] == rejected.headers["x-ratelimit-reset"]
            # Writes have their own budget, and a valid key is its own identity.
            assert http.get(f"{first.url}/v1/items", headers=WRITER).status_code == 200

            assert backends.redis is not None
            backends.redis.stop()
            after = [http.get(f"{(first, second)[n % 2].url}/v1/items") for n in range(6)]
            assert [r.status_code for r in after] == [200] * 6  # fail open: served, unlimited
            assert "x-ratelimit-remaining" not in after[0].headers
            assert http.get(f"{first.url}/readyz").json()["status"] == "degraded"
            metrics = http.get(f"http://127.0.0.1:{first.env['METRICS_PORT']}/metrics").text
            skipped = re.search(r'^rate_limit_decisions_total\{decision="store_unavailable"\} (\S+)$', metrics, re.M)
            assert skipped is not None
            assert float(skipped[1]) >= 1
            assert re.search(r'^circuit_breaker_open\{dependency="redis"\} 1\.0$', metrics, re.M)
    warned = lines_where([first.logfile, second.logfile], lambda line: line["msg"] == "rate limit store unavailable")
    assert warned


def rate_limit_round_trips(api: ApiProcess) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics").text
    found = re.search(
        r'^dependency_call_duration_seconds_count\{dependency="redis",operation="rate_limit"\} (\S+)$', metrics, re.M
    )
    return float(found[1]) if found else 0.0


def test_two_pods_one_client_the_limit_holds_within_pods_times_the_local_budget(
    start_api: Callable[..., ApiProcess],
) -> None:
    """The bound in service/ratelimit.py: limit <= admitted <= limit + pods x floor(limit x RATE_LIMIT_LOCAL_SHARE)."""
    with dedicated_backends() as backends:
        urls = {"DATABASE_URL": backends.database_url, "REDIS_URL": backends.redis_url}
        limits = {"RATE_LIMIT_READS": "1000/hour", "RATE_LIMIT_LOCAL_SHARE": "0.02"}  # budget 20 per pod
        pods = [start_api(**urls, **limits), start_api(**urls, **limits)]
        statuses: list[int] = []

        async def send(until: int) -> None:
            async with httpx.AsyncClient() as http:
                while len(statuses) < until:  # bursts of 10 concurrent requests, alternating pods
                    wave = await asyncio.gather(
                        *(
                            http.get(f"{pods[n % 2].url}/v1/items?limit=1")
                            for n in range(len(statuses), len(statuses) + 10)
                        )
                    )
                    statuses.extend(r.status_code for r in wave)

        asyncio.run(send(600))  # far from the limit: counted in each pod, no round trip per request
        assert statuses == [200] * 600
        round_trips = sum(rate_limit_round_trips(pod) for pod in pods)
        assert round_trips < 600 / 4, f"{round_trips} Redis round trips for 600 requests"
        asyncio.run(send(1400))
        admitted = statuses.count(200)
        assert statuses.count(429) == len(statuses) - admitted
        assert 1000 <= admitted <= 1000 + 2 * 20


def test_api_keys_never_reach_the_logs(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    wrong = "cat_wrong-key-that-must-not-be-logged"
    with httpx.Client(base_url=api.url) as http:
        assert http.post("/v1/items", json=ITEM, headers=WRITER).status_code == 201
        assert http.post("/v1/items", json=ITEM, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        assert http.get("/v1/items/1", headers={"Authorization": f"Bearer {wrong}"}).status_code == 200
    api.logs(until=lambda line: line.get("path") == "/v1/items/1")  # the last request's line is written
    log = api.logfile.read_text()
    assert WRITER_KEY not in log
    assert wrong not in log
    assert '"principal":"test-writer"' in log  # who did it is logged, by name


def test_the_metrics_endpoint_passes_promtool(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    with httpx.Client(base_url=api.url, headers=WRITER) as http:
        http.post("/v1/items", json=ITEM)
        for path in ("/v1/items/1", "/v1/items", "/v1/items:batch?ids=1,2", "/nope", "/v1/items/99"):
            http.get(path)
        exposition = http.get(f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics").text
    assert "http_server_request_duration_seconds_bucket" in exposition
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")
