"""The API as it runs in a pod: gunicorn master + one uvicorn worker, real signals, real sockets."""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import asyncpg
import httpx
import orjson
import psutil
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.fixtures.backends import Backends, TableLock
from tests.fixtures.keys import WRITER
from tests.fixtures.paths import ROOT
from tests.fixtures.processes import ApiProcess, api_env

pytestmark = pytest.mark.e2e

ITEM = {"sku": "e2e-1", "name": "Widget", "category": "tools", "price_cents": 500, "stock": 5}


async def test_sigterm_drains_finishes_in_flight_and_exits_in_time(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    drain, graceful = 2.0, 10
    api = start_api(SHUTDOWN_DRAIN_SECONDS=str(drain), GRACEFUL_TIMEOUT_SECONDS=str(graceful))
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=WRITER) as http:
        item_id = (await http.post("/v1/items", json=ITEM)).json()["id"]

        # Make a read slow for real: hold a lock it must wait for.
        lock = await TableLock(db).hold()
        slow = asyncio.create_task(http.get(f"/v1/items/{item_id}", headers={"X-Request-ID": "slow-request-1"}))
        await lock.wait_for_waiter()

        sent = time.monotonic()
        api.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # New connections are still accepted while draining, and readiness says go away.
        async with httpx.AsyncClient(base_url=api.url, timeout=2) as fresh:
            ready = await fresh.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "draining"}
            assert (await fresh.get("/livez")).status_code == 200

        # Release the lock after the drain ended: the in-flight request still completes.
        await asyncio.sleep(drain + 0.5 - (time.monotonic() - sent))
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=api.url, timeout=2) as late:
                await late.get("/livez")
        assert not slow.done()
        await lock.release()
        response = await slow
        assert response.status_code == 200
        assert response.json()["id"] == item_id

    assert api.process is not None
    exit_code = await asyncio.to_thread(api.process.wait, graceful + 5)
    elapsed = time.monotonic() - sent
    assert exit_code == 0
    assert elapsed < graceful
    messages = [entry["msg"] for entry in api.logs()]
    closing = [entry for entry in api.logs() if entry["msg"] == "closing connections before the worker stops"]
    assert [(entry["reason"], entry["drain_seconds"]) for entry in closing] == [("SIGTERM", drain)]
    assert "stopped" in messages  # the lifespan closed the pool and the Redis client
    slow_lines = [entry for entry in api.logs() if entry.get("request_id") == "slow-request-1"]
    assert [(line["msg"], line["status"]) for line in slow_lines] == [("request", 200)]


async def test_access_log_is_json_with_request_id_and_skips_probes(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    api = start_api()
    async with httpx.AsyncClient(base_url=api.url) as http:
        await http.get("/readyz")
        await http.get("/livez")
        response = await http.get("/v1/items/999", headers={"X-Request-ID": "trace-me-42"})
        assert response.headers["x-request-id"] == "trace-me-42"
        assert "server" not in response.headers
    lines = api.logs(until=lambda entry: entry.get("request_id") == "trace-me-42")
    access = [entry for entry in lines if entry["logger"] == "service.access"]
    assert [entry["path"] for entry in access] == ["/v1/items/999"]  # the probes before it left no line
    # The service's own logging configuration lets access lines skip the LogRecord (log_access).
    assert [e["access_shortcut"] for e in lines if e["msg"] == "logging in the background"] == [True]
    [line] = access
    assert line["request_id"] == "trace-me-42"
    assert line["status"] == 404
    assert line["method"] == "GET"
    assert line["duration_ms"] > 0


async def test_no_access_line_is_lost_at_sigterm(start_api: Callable[..., ApiProcess], db: asyncpg.Connection) -> None:
    """Lines are written by a thread behind a queue; the worker writes the whole queue before it exits."""
    api = start_api()
    answered: set[str] = set()
    flowing = asyncio.Event()

    async def client(http: httpx.AsyncClient, first: int) -> None:
        for n in range(first, 100_000, 16):  # until the server is gone
            try:
                response = await http.get(f"/v1/items/{n}", headers={"X-Request-ID": f"burst-{n}"})
            except httpx.TransportError:
                return
            answered.add(response.headers["x-request-id"])
            if len(answered) >= 300:
                flowing.set()

    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        clients = [asyncio.create_task(client(http, k)) for k in range(16)]
        await asyncio.wait_for(flowing.wait(), 30)
        api.signal(signal.SIGTERM)  # 16 requests in flight, lines still queued
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert api.process is not None
    assert await asyncio.to_thread(api.process.wait, 20) == 0
    logged = {entry["request_id"] for entry in api.logs() if entry["logger"] == "service.access"}
    assert len(answered) >= 300
    assert answered - logged == set()  # every request that got an answer has its line


async def test_csv_export_of_50k_rows_over_http(start_api: Callable[..., ApiProcess], db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO items (sku, name, category, price_cents, stock)
           SELECT 'sku-' || n, 'Item ' || n, 'cat-' || (n % 9), n, n % 50 FROM generate_series(1, 50000) AS n"""
    )
    api = start_api()
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=60) as http,
        http.stream("GET", "/v1/items/export.csv") as response,
    ):
        assert response.status_code == 200
        assert "content-length" not in response.headers  # streamed, not buffered
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0][0] == "id"
    assert len(rows) == 50001
    assert rows[-1][1] == "sku-50000"


def test_missing_database_url_stops_startup_with_one_line(backends: Backends) -> None:
    env = api_env(backends)
    del env["DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip() == "configuration error: DATABASE_URL is required but not set"


@pytest.mark.parametrize(
    "command",
    [["-m", "gunicorn", "-c", "python:service.gunicorn_conf"], ["-m", "service.migrate"], ["-m", "service.worker"]],
)
def test_malformed_database_url_stops_startup_with_one_line(backends: Backends, command: list[str]) -> None:
    env = api_env(backends, DATABASE_URL="postgres//forgot-the-colon")
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: DATABASE_URL is invalid")


async def test_sigint_is_a_quick_shutdown(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api(SHUTDOWN_DRAIN_SECONDS="5", GRACEFUL_TIMEOUT_SECONDS="20")
    sent = time.monotonic()
    api.signal(signal.SIGINT)
    assert api.process is not None
    await asyncio.to_thread(api.process.wait, 10)
    assert time.monotonic() - sent < 3  # no drain, no waiting out the graceful timeout


def test_worker_exits_when_its_master_is_killed(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    assert api.process is not None
    [worker] = psutil.Process(api.process.pid).children()
    api.signal(signal.SIGKILL)
    api.process.wait()
    gone, _ = psutil.wait_procs([worker], timeout=5)
    assert gone, "the orphaned worker kept running"


async def test_a_client_that_leaves_mid_export_gives_its_connection_back(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO items (sku, name, category, price_cents, stock)
           SELECT 'sku-' || n, 'Item ' || n, 'c', n, 1 FROM generate_series(1, 200000) AS n"""
    )
    # A pool of one: the read below can only be served if the abandoned export released it.
    api = start_api(DB_POOL_MAX_SIZE="1", DB_POOL_MIN_SIZE="1", DB_POOL_ACQUIRE_TIMEOUT_SECONDS="3")
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(b"GET /v1/items/export.csv HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await reader.read(65536)
    writer.transport.abort()  # hang up mid-stream, without reading the rest
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        response = await http.get("/v1/items/1")
        assert response.status_code == 200
        active = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'catalog-api' AND state LIKE 'idle in%'"
        )
        assert active == 0, "the export's transaction was left open"
        # The abandoned export is recorded as 499 (client closed), in OpenMetrics when Prometheus
        # asks for it. The observation lands when the export's task unwinds: poll briefly.
        metrics_url = f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics"
        wanted = {
            "http_route": "/v1/items/export.csv",
            "http_request_method": "GET",
            "http_response_status_code": "499",
        }
        for _ in range(50):
            exposition = await http.get(metrics_url, headers={"Accept": "application/openmetrics-text"})
            counts = [
                sample.value
                for family in text_string_to_metric_families(exposition.text)  # type: ignore[no-untyped-call]
                for sample in family.samples
                if sample.name == "http_server_request_duration_seconds_count" and sample.labels == wanted
            ]
            if counts:
                break
            await asyncio.sleep(0.1)
        assert exposition.headers["content-type"].startswith("application/openmetrics-text")
        assert counts == [1.0]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str]]:
    """One request on an open connection; the status and headers of its response (body read and dropped)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers


async def test_a_draining_pod_answers_connection_close_on_a_reused_keepalive_connection(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    api = start_api(SHUTDOWN_DRAIN_SECONDS="3", GRACEFUL_TIMEOUT_SECONDS="10")
    get = b"GET /v1/items?limit=1 HTTP/1.1\r\nHost: t\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    status, headers = await _exchange(reader, writer, get)
    assert (status, headers.get("connection")) == (200, None)  # kept alive while the pod is in service
    api.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    # The same connection, reused during the drain: served, told to close, and closed.
    status, headers = await _exchange(reader, writer, get)
    assert (status, headers.get("connection")) == (200, "close")
    assert await asyncio.wait_for(reader.read(1), 2) == b""  # the pod closed it after the response
    writer.close()
    # A write on a fresh connection during the drain, and the probes: the same.
    body = orjson.dumps(ITEM)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    status, headers = await _exchange(
        reader,
        writer,
        b"POST /v1/items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Authorization: {WRITER['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    assert (status, headers.get("connection")) == (201, "close")
    writer.close()
    async with httpx.AsyncClient(base_url=api.url) as http:
        ready = await http.get("/readyz")
    assert (ready.status_code, ready.headers.get("connection")) == (503, "close")
