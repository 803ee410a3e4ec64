"""The development-only per-request profiler (service/profiling.py): on request, never in production."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.keys import WRITER


async def test_a_request_with_x_profile_gets_its_own_profile_and_others_get_none(
    backends: Backends, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = make_settings(backends, request_profiling=True, request_profiling_dir=tmp_path / "profiles")
    async with lifespan_client(create_app(settings)) as http:
        item = {"name": "Profiled", "category": "c", "price_cents": 1, "stock": 1}
        plain = await http.post("/v1/items", json=item | {"sku": "prof-1"}, headers=WRITER)
        # The profiled request waits for a lock, so its route awaits long enough to be sampled:
        # a request of under a millisecond can fall between two samples (the interval is 0.5 ms).
        async with TableLock(db) as lock:
            profiling = asyncio.create_task(
                http.post(
                    "/v1/items",
                    json=item | {"sku": "prof-2"},
                    headers=WRITER | {"X-Profile": "1", "X-Request-ID": "prof-req"},
                )
            )
            await lock.wait_for_waiter()
            await asyncio.sleep(0.02)
        profiled = await profiling
    assert "x-profile-report" not in plain.headers
    assert profiled.status_code == 201
    assert profiled.json()["sku"] == "prof-2"  # the response itself is untouched
    report = Path(profiled.headers["x-profile-report"])
    assert report.parent == tmp_path / "profiles"
    assert "prof-req" in report.name
    page = report.read_text()  # noqa: ASYNC240 - a test reading one small file
    assert "pyinstrument" in page
    assert "create_item" in page  # the route's own function is in the call tree
    assert [p.name for p in (tmp_path / "profiles").iterdir()] == [report.name]  # one request, one profile


def test_production_refuses_request_profiling_naming_the_setting(backends: Backends) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(
            backends,
            environment="production",
            secret_key="a-production-secret-key-that-is-long-enough-0123",
            request_profiling=True,
        )
    assert "REQUEST_PROFILING must be false when ENVIRONMENT=production" in str(refused.value)


async def test_without_the_setting_the_header_does_nothing(
    backends: Backends, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = make_settings(
        backends,
        environment="production",
        secret_key="a-production-secret-key-that-is-long-enough-0123",
        request_profiling_dir=tmp_path / "profiles",
    )
    async with lifespan_client(create_app(settings)) as http:
        response = await http.get("/v1/items?limit=1", headers={"X-Profile": "1"})
    assert response.status_code == 200
    assert "x-profile-report" not in response.headers
    assert not (tmp_path / "profiles").exists()
