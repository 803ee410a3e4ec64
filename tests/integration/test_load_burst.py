"""deploy/kind/load_burst.py, the Tiltfile's load-burst button, run against the real app
(real PostgreSQL and Redis): a one-second burst seeds its items, reads them, enqueues
cpu.burn jobs and accounts for every answer; it stays within its bounds and reports a
refused key as a failure."""

from __future__ import annotations

import asyncpg
import httpx
import load_burst  # deploy/kind, on sys.path via tests/fixtures/__init__.py
import pytest

from service.config import Rate, Settings
from tests.fixtures.app import make_settings
from tests.fixtures.backends import Backends


@pytest.fixture
def settings(backends: Backends) -> Settings:
    # Cache hits no longer wait for Redis: one second at concurrency 4 reads more than the
    # default 1,200 per minute. This test is about the burst's accounting, not the limiter.
    return make_settings(backends, rate_limit_reads=Rate(count=1_000_000, period_seconds=60))


async def test_a_short_burst_reads_writes_and_enqueues(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    summary = await load_burst.burst(client, seconds=1.0, concurrency=4, jobs=3)

    assert summary.succeeded(jobs=3), summary.report()
    assert summary.statuses[201] == summary.items_created == load_burst.SEED_ITEMS
    assert summary.statuses[202] == summary.jobs_accepted == 3
    assert summary.statuses[200] == len(summary.latencies) > 0
    assert summary.failed == 0
    assert await db.fetchval("SELECT count(*) FROM items WHERE category = 'burst'") == load_burst.SEED_ITEMS
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE kind = 'cpu.burn'") == 3
    assert f"{load_burst.SEED_ITEMS} items created, 3 jobs accepted" in summary.report()


async def test_a_refused_key_is_a_failed_burst(client: httpx.AsyncClient) -> None:
    client.headers["Authorization"] = "Bearer cat_not-a-key"
    summary = await load_burst.burst(client, seconds=0.3, concurrency=2, jobs=1)
    assert summary.items_created == 0
    assert summary.statuses[401] > 0
    assert not summary.succeeded(jobs=1)


@pytest.mark.parametrize(
    "arguments",
    [["--seconds", "301"], ["--seconds", "0"], ["--concurrency", "65"], ["--jobs", "201"], ["--jobs", "-1"]],
)
def test_arguments_beyond_the_bounds_are_refused(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        load_burst.main(arguments)
    assert refused.value.code == 2


def test_no_key_no_burst(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    assert load_burst.main(["--seconds", "1"]) == 2
    assert "API_KEY" in capsys.readouterr().err
