"""A fork deletes the example domain as the README says (service/items/, its migration, its router
line) and is left with a working service: migrations apply, the app starts and is ready, jobs work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.backends import dedicated_backends
from tests.fixtures.keys import TEST_API_KEYS, TEST_SECRET_KEY, WRITER
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.e2e

IMPORTS_ITEMS = re.compile(r"^\s*(from|import) service\.items\b", re.MULTILINE)
ITEMS_LINES = (
    "from service.items.router import router as items_router\n",
    "    app.include_router(items_router)  # the hot routes are matched first\n",
)

# Runs inside the copy: migrate, start the app with its real lifespan, and try it.
PROBE = """
import asyncio, json, sys
import httpx
from service.app import create_app
from service.config import load_settings
from service.migrate import migrate

async def main() -> None:
    settings = load_settings()
    applied = await migrate(str(settings.database_url))
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        async def with_state(scope, receive, send):
            scope["state"] = dict(state or {})
            await app(scope, receive, send)
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://copy") as http:
            job = await http.post(
                "/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 0}}, headers=json.loads(sys.argv[1])
            )
            print(json.dumps({
                "applied": [str(name) for name in applied],
                "readyz": (await http.get("/readyz")).status_code,
                "job": job.status_code,
                "job_read": (await http.get(job.headers["location"])).status_code,
                "items": (await http.get("/v1/items")).status_code,
            }))

asyncio.run(main())
"""


def test_deleting_the_items_domain_leaves_a_working_service(tmp_path: Path) -> None:
    copy = tmp_path / "fork"
    copy.mkdir()
    shutil.copytree(ROOT / "service", copy / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(copy / "service" / "items")
    [migration] = (copy / "service" / "migrations").glob("*_create_items.sql")
    migration.unlink()
    app_py = copy / "service" / "app.py"
    text = app_py.read_text()
    for line in ITEMS_LINES:
        assert text.count(line) == 1, f"service/app.py no longer has the line the README says to delete: {line!r}"
        text = text.replace(line, "")
    app_py.write_text(text)
    importing = [p for p in (copy / "service").rglob("*.py") if IMPORTS_ITEMS.search(p.read_text())]
    assert not importing, f"these modules outside service/items import it: {importing}"

    with dedicated_backends() as backends:
        assert backends.postgres is not None
        backends.postgres.create_database("fork")  # empty: the fork's own migrations make its tables
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "REDIS_"))},
            "PYTHONPATH": str(copy),
            "ENVIRONMENT": "development",
            "DATABASE_URL": backends.postgres.url("fork"),
            "REDIS_URL": backends.redis_url,
            "SECRET_KEY": TEST_SECRET_KEY,
            "API_KEYS": json.dumps(TEST_API_KEYS),
            "METRICS_PORT": "0",
        }
        run = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(WRITER)],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["applied"], result  # the remaining migrations apply to an empty database
    assert not any("items" in name for name in result["applied"]), result
    assert result["readyz"] == 200
    assert result["job"] == 202
    assert result["job_read"] == 200
    assert result["items"] == 404  # the domain is gone, and nothing else broke
