"""`make up PGBOUNCER=1` and `make up REPLICA=1`, and the drills that need them (`make drill`'s
pgbouncer-restart and primary-failover rows), each against a stack of its own on free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import servers

from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.e2e
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]


def _stack(**flags: str) -> Iterator[dict[str, str]]:
    # Not pytest's tmp_path: it is private to root (0700), and PostgreSQL and PgBouncer run as `postgres`.
    run_dir = Path(tempfile.mkdtemp(prefix="catalog-dbstack-"))
    run_dir.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL", "API_KEYS"}}
    names = [
        "API_PORT",
        "POSTGRES_PORT",
        "REDIS_PORT",
        "PROMETHEUS_PORT",
        "WORKER_METRICS_PORT",
        "PGBOUNCER_PORT",
        "POSTGRES_REPLICA_PORT",
    ]
    ports = {name: str(servers.free_port()) for name in names}
    pods = [str(servers.free_port()) for _ in range(4)]
    env.update(ports, RUN_DIR=str(run_dir), API_POD_PORTS=",".join(pods[:2]), API_POD_METRICS_PORTS=",".join(pods[2:]))
    env.update(flags, SHUTDOWN_DRAIN_SECONDS="1")
    up = subprocess.run([*STACK, "up"], env=env, capture_output=True, text=True, timeout=240, check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        down = subprocess.run([*STACK, "down"], env=env, capture_output=True, text=True, timeout=120, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        still_open = [port for port in [*ports.values(), *pods] if servers.port_open(int(port))]
        assert not still_open, f"`down` left ports {still_open} listening"


def _drill(env: dict[str, str], name: str, *arguments: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.drills", "--only", name, "--rate", "20", *arguments],
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT / "bench")},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode in {0, 1}, run.stdout[-3000:] + run.stderr[-3000:]
    [directory] = (Path(env["RUN_DIR"]) / "drills").iterdir()
    [result] = orjson.loads((directory / "drills.json").read_bytes())["drills"]
    return dict(result)


def _write(env: dict[str, str]) -> int:
    key = (Path(env["RUN_DIR"]) / "api-key").read_text().strip()
    body = {"sku": f"db-{os.getpid()}", "name": "n", "category": "c", "price_cents": 1, "stock": 1}
    response = httpx.post(
        f"http://127.0.0.1:{env['API_PORT']}/v1/items", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return response.status_code


@pytest.fixture(scope="module")
def pooled_stack() -> Iterator[dict[str, str]]:
    yield from _stack(PGBOUNCER="1")


def test_make_up_pgbouncer_puts_the_pooler_in_front_and_survives_its_restart(pooled_stack: dict[str, str]) -> None:
    stack = orjson.loads((Path(pooled_stack["RUN_DIR"]) / "stack.json").read_bytes())
    assert stack["pgbouncer"] is True
    assert _write(pooled_stack) == 201
    # The pods reach PostgreSQL through PgBouncer: their sessions come from its address, not the pods'.
    log = (Path(pooled_stack["RUN_DIR"]) / "api-1.log").read_text()
    assert "statement_timeout through the pooler" in log or "longer statement_timeout" in log
    result = _drill(pooled_stack, "pgbouncer-restart", "--fault-seconds", "5")
    assert result["jobs_lost"] == 0, result
    assert set(result["failed_by_status"]) <= {"503"}, result  # problem answers from the pods, never a 502
    assert result["recovery_seconds"] <= 10, result


@pytest.fixture(scope="module")
def replicated_stack() -> Iterator[dict[str, str]]:
    yield from _stack(REPLICA="1")


def test_make_up_replica_fails_over_and_rebuilds_the_old_primary(replicated_stack: dict[str, str]) -> None:
    run_dir = Path(replicated_stack["RUN_DIR"])
    assert "target_session_attrs=read-write" in orjson.loads((run_dir / "stack.json").read_bytes())["database_url"]
    result = _drill(replicated_stack, "primary-failover")
    assert result["jobs_lost"] == 0, result
    assert set(result["failed_by_status"]) <= {"503"}, result
    assert result["recovery_seconds"] <= 10, result
    assert _write(replicated_stack) == 201  # the new primary serves writes
    spill = orjson.loads((run_dir / "stack.json").read_bytes())["spill_dir"] or str(run_dir)
    first = servers.Postgres(Path(spill) / "postgres", int(replicated_stack["POSTGRES_PORT"]))
    second = servers.Postgres(Path(spill) / "postgres-replica", int(replicated_stack["POSTGRES_REPLICA_PORT"]))
    assert (first.in_recovery(), second.in_recovery()) == (True, False)  # roles swapped, both running
