"""Access-log sampling: errors and slow requests always get a line, fast successes ACCESS_LOG_SAMPLE_RATE of them."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from prometheus_client import REGISTRY

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.items import seed


def sampled_out() -> float:
    return REGISTRY.get_sample_value("access_log_lines_total", {"outcome": "sampled_out"}) or 0.0


async def test_with_sampling_off_only_errors_and_slow_requests_are_logged(
    backends: Backends, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(db, 3)
    app = create_app(make_settings(backends, access_log_sample_rate=0.0))
    async with lifespan_client(app) as http:
        await http.get("/v1/items/1")  # warm the cache: the next reads are fast
        before = sampled_out()
        with caplog.at_level(logging.INFO, logger="service.access"):
            for _ in range(20):
                assert (await http.get("/v1/items/1")).status_code == 200
            assert (await http.get("/v1/items/999")).status_code == 404
            async with TableLock(db) as lock:  # a read that waits 100 ms for a lock: slower than the P50 target
                slow = asyncio.create_task(http.get("/v1/items/2"))
                await asyncio.sleep(0.1)
                await lock.release()
                assert (await slow).status_code == 200
    lines = [(r.path, r.status) for r in caplog.records if r.name == "service.access"]  # type: ignore[attr-defined]
    assert lines == [("/v1/items/999", 404), ("/v1/items/2", 200)]
    assert sampled_out() - before == 20


async def test_by_default_every_request_is_logged(
    backends: Backends, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(db, 1)
    async with lifespan_client(create_app(make_settings(backends))) as http:
        before = sampled_out()
        with caplog.at_level(logging.INFO, logger="service.access"):
            for _ in range(10):
                assert (await http.get("/v1/items/1")).status_code == 200
    assert len([r for r in caplog.records if r.name == "service.access"]) == 10
    assert sampled_out() == before
