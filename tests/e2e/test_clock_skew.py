"""Two API pods whose wall clocks disagree still share one rate limit and one cache.

One gunicorn pod runs with its wall clock moved (tests/fixtures/skewed_clock: `time.time()`
of that process only, as on a node whose NTP is off); the other runs on the host's clock.
Both use the same Redis and PostgreSQL. Before the pods read Redis's clock
(service/redisclock.py): a pod ahead counted its writes under the next window's key, so the
two pods admitted twice the limit; a pod behind set the cache's trust token to expire in the
past, so the token was replaced several times a second and the other pod's entries in Redis
were never trusted (0 hits of 10). The numbers of each run are printed (`pytest -s`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
import redis

from tests.fixtures.backends import Backends
from tests.fixtures.keys import WRITER
from tests.fixtures.paths import ROOT
from tests.fixtures.processes import ApiProcess, lines_where

pytestmark = pytest.mark.e2e
SKEWED_CLOCK = str(ROOT / "tests" / "fixtures" / "skewed_clock")
WRITES_PER_MINUTE = 120  # the default RATE_LIMIT_WRITES
LOCAL_BUDGET = 1  # floor(120 x RATE_LIMIT_LOCAL_SHARE 0.01): B in the limiter's bound


def _skewed(offset_seconds: float, name: str) -> dict[str, str]:
    return {"PYTHONPATH": SKEWED_CLOCK, "WALL_CLOCK_OFFSET_SECONDS": str(offset_seconds), "SERVICE_NAME": name}


def _redis_seconds(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return float(seconds) + microseconds / 1e6


def _logged_offset(api: ApiProcess) -> float:
    """How far the pod's log timestamps (its wall clock) are from the host's: proof the skew took."""
    with httpx.Client(base_url=api.url) as http:
        marker = http.get("/v1/items/999999", headers={"X-Request-ID": f"skew-{api.port}"})
    assert marker.status_code == 404
    [line] = lines_where([api.logfile], lambda line: line.get("request_id") == f"skew-{api.port}")
    return datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp() - time.time()


def _counter(api: ApiProcess, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics", timeout=5).text
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{selector}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_pod_whose_clock_is_50s_ahead_admits_writes_within_the_bound(
    start_api: Callable[..., ApiProcess], backends: Backends
) -> None:
    # Their own SERVICE_NAME (the Redis key prefix): no other test's writes count in this window.
    name = f"skew-limit-{uuid.uuid4().hex[:8]}"
    ahead = start_api(**_skewed(50, name))
    exact = start_api(SERVICE_NAME=name)
    assert 49 < _logged_offset(ahead) < 51
    client = redis.Redis.from_url(backends.redis_url)
    # A pod 50 s ahead is in the next minute while Redis's clock reads 10-60 s into this one: start
    # the burst there, early enough that it ends inside the same minute of Redis's clock.
    while not 11 <= _redis_seconds(client) % 60 <= 45:
        time.sleep(0.2)
    started = _redis_seconds(client)
    admitted = {ahead.url: 0, exact.url: 0}
    with httpx.Client(headers=WRITER) as http:
        for n in range(3 * WRITES_PER_MINUTE):  # alternating pods, one client (one API key)
            pod = ahead if n % 2 else exact
            response = http.delete(f"{pod.url}/v1/items/999999")
            assert response.status_code in {404, 429}, response.text
            admitted[pod.url] += response.status_code == 404
    ended = _redis_seconds(client)
    assert int(started // 60) == int(ended // 60), "the burst crossed a window of Redis's clock"
    total = sum(admitted.values())
    bound = WRITES_PER_MINUTE + 2 * LOCAL_BUDGET
    print(f"\nclock skew +50 s: {total} writes admitted in one window (limit {WRITES_PER_MINUTE}, bound {bound})")
    assert WRITES_PER_MINUTE <= total <= bound, admitted


def test_a_pod_whose_clock_is_3s_behind_leaves_the_shared_cache_trusted(
    start_api: Callable[..., ApiProcess], backends: Backends
) -> None:
    name = f"skew-cache-{uuid.uuid4().hex[:8]}"
    behind = start_api(**_skewed(-3, name))
    other = start_api(SERVICE_NAME=name)
    assert -3.5 < _logged_offset(behind) < -2.5
    client = redis.Redis.from_url(backends.redis_url)
    trust_key = f"{name}:cache-trust"
    tokens: list[bytes | str | None] = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # both keepers renew every 0.25 s: 16 renewals each
        token = client.get(trust_key)
        if not tokens or token != tokens[-1]:
            tokens.append(token)
        time.sleep(0.01)
    replaced = len(tokens) - 1

    with httpx.Client(headers=WRITER) as http:
        ids = []
        for n in range(10):
            item = {"sku": f"skew-{n}", "name": "clock", "category": "skew", "price_cents": n, "stock": 1}
            created = http.post(f"{behind.url}/v1/items", json=item)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        for item_id in ids:  # the pod behind loads each one from PostgreSQL into Redis
            assert http.get(f"{behind.url}/v1/items/{item_id}").status_code == 200
        hits_before = _counter(other, "cache_requests_total", {"layer": "l2", "result": "hit"})
        for item_id in ids:  # the other pod has none in its memory: each read asks Redis
            assert http.get(f"{other.url}/v1/items/{item_id}").status_code == 200
        hits = _counter(other, "cache_requests_total", {"layer": "l2", "result": "hit"}) - hits_before
    print(f"\nclock skew -3 s: trust token replaced {replaced} times in 4 s; other pod's hits from Redis {hits:g}/10")
    assert None not in tokens, "the trust token lapsed"
    assert replaced == 0, tokens
    assert hits == 10
