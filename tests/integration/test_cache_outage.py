"""Stale reads after a Redis outage: a real Redis frozen (SIGSTOP) and thawed under steady traffic.

The issue: with Redis frozen for 30 s, items PATCHed meanwhile answered 200,
and after Redis came back 137 of 175 reads returned the old values for up to
28 s (the invalidation was skipped while the breaker was open, and the old
entry stayed in Redis). Here two app instances (two pods) share one
PostgreSQL and one Redis; both read every item in a loop while Redis is
frozen, items are PATCHed and DELETEd through both pods during the freeze,
and Redis is thawed. A read that started after a write was acknowledged and
returned older data is counted: there must be none, during the freeze or after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, dedicated_backends
from tests.fixtures.items import new_item
from tests.fixtures.keys import WRITER

PATCHED = range(1, 6)
DELETED = range(6, 11)
FREEZE_SECONDS = 4.0
AFTER_SECONDS = 4.0


@pytest.fixture
def dedicated() -> Iterator[Backends]:
    with dedicated_backends() as backends:
        yield backends


@dataclass
class Read:
    started: float
    item: int
    status: int
    stock: int | None


async def read_forever(client: httpx.AsyncClient, reads: list[Read], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for item in [*PATCHED, *DELETED]:
            started = time.monotonic()
            response = await client.get(f"/v1/items/{item}")
            stock = response.json()["stock"] if response.status_code == 200 else None
            reads.append(Read(started, item, response.status_code, stock))
        await asyncio.sleep(0.01)


async def test_no_read_is_older_than_an_acknowledged_write_through_a_frozen_redis(
    dedicated: Backends, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dedicated.redis is not None
    settings = make_settings(
        dedicated,
        cache_l1_ttl_seconds=60,  # long: a stale L1 entry would show
        breaker_reset_seconds=0.5,
        redis_command_timeout_seconds=0.2,
        redis_connect_timeout_seconds=0.2,
        rate_limit_enabled=False,
    )
    async with lifespan_client(create_app(settings)) as pod_a, lifespan_client(create_app(settings)) as pod_b:
        pods = [pod_a, pod_b]
        for pod in pods:
            pod.headers.update(WRITER)
        for n in [*PATCHED, *DELETED]:
            assert (await pod_a.post("/v1/items", json=new_item(n, stock=1))).status_code == 201
        reads: list[Read] = []
        stop = asyncio.Event()
        readers = [asyncio.create_task(read_forever(pod, reads, stop)) for pod in pods]
        await asyncio.sleep(1.0)  # both pods' caches hold every item

        acknowledged: dict[int, float] = {}  # item -> when its write was acknowledged
        pid = int(dedicated.redis.pidfile.read_text())
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            await asyncio.sleep(0.5)

            async def write(item: int) -> None:
                pod = pods[item % 2]
                if item in PATCHED:
                    response = await pod.patch(f"/v1/items/{item}", json={"stock": 1000 + item})
                    assert response.status_code == 200, response.text
                else:
                    response = await pod.delete(f"/v1/items/{item}")
                    assert response.status_code == 204, response.text
                acknowledged[item] = time.monotonic()

            await asyncio.gather(*(write(item) for item in [*PATCHED, *DELETED]))
            await asyncio.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen_at)))
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        await asyncio.sleep(AFTER_SECONDS)
        stop.set()
        await asyncio.gather(*readers)

    def stale(read: Read) -> bool:
        if read.item not in acknowledged or read.started <= acknowledged[read.item]:
            return False  # the write had not answered yet: old or new are both right
        if read.item in PATCHED:
            return read.status != 200 or read.stock != 1000 + read.item
        return read.status != 404

    after = [read for read in reads if read.started > thawed_at]
    counts = {
        "reads": len(reads),
        "reads after recovery": len(after),
        "stale PATCH reads": sum(stale(r) for r in reads if r.item in PATCHED),
        "stale DELETE reads": sum(stale(r) for r in reads if r.item in DELETED),
        "stale PATCH reads after recovery": sum(stale(r) for r in after if r.item in PATCHED),
        "stale DELETE reads after recovery": sum(stale(r) for r in after if r.item in DELETED),
        "write latency during the freeze (s, max)": round(max(acknowledged.values()) - frozen_at - 0.5, 2),
    }
    with capsys.disabled():
        print(f"\nredis outage: {counts}")
    assert len(acknowledged) == 10
    assert len(after) > 100
    assert counts["stale PATCH reads"] == 0
    assert counts["stale DELETE reads"] == 0
