"""HEAD works wherever GET does (RFC 9110): GET's status and headers, no body; 405 lists what is allowed."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from service.app import create_app
from service.worker.http import ProbeServer
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import ROUTES, Backends
from tests.fixtures.items import ITEM, seed

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES

# Headers that differ between two responses to the same request.
_VOLATILE = {"x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "date"}


def _stable(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in _VOLATILE}


@pytest.fixture
async def job_path(client: httpx.AsyncClient) -> str:
    job = await client.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1}})
    return str(job.headers["location"])


@pytest.mark.parametrize(
    "path",
    [
        "/livez",
        "/readyz",
        "/startupz",
        "/v1/items",
        "/v1/items?limit=1",
        "/v1/items/1",
        "/v1/items/999",  # a 404 problem: same status and headers
        "/v1/items?limit=0",  # a 422 problem
        "/v1/items:batch?ids=1,2",
        "/v1/items/export.csv",
        "/v1/jobs/{job}",
        f"/v1/jobs/{uuid.uuid4()}",
        "/openapi.json",
    ],
)
async def test_head_is_get_without_the_body(
    client: httpx.AsyncClient, db: asyncpg.Connection, job_path: str, path: str
) -> None:
    await seed(db, 3)
    path = path.replace("/v1/jobs/{job}", job_path)
    get = await client.get(path)
    head = await client.head(path)
    assert head.status_code == get.status_code, (path, head.status_code)
    assert head.content == b""
    assert _stable(head) == _stable(get)
    assert "x-request-id" in head.headers
    assert head.headers["x-content-type-options"] == "nosniff"


async def test_head_of_an_export_stops_it_and_gives_its_slot_and_connection_back(
    backends: Backends, db: asyncpg.Connection
) -> None:
    await seed(db, 5000)
    settings = make_settings(backends, export_max_concurrent=1, db_pool_min_size=1, db_pool_max_size=1)
    async with lifespan_client(create_app(settings)) as client:
        for _ in range(3):  # each would be a 503 if the previous export still held the slot or the connection
            head = await client.head("/v1/items/export.csv")
            assert head.status_code == 200
            assert head.headers["content-type"] == "text/csv; charset=utf-8"
            assert head.content == b""
            await asyncio.sleep(0.05)  # the stopped stream is closed by the event loop
        assert (await client.get("/v1/items/1")).status_code == 200
        full = await client.get("/v1/items/export.csv")
        assert full.status_code == 200
        assert len(full.text.splitlines()) == 5001


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/items", "GET, HEAD, POST"),
        ("DELETE", "/v1/items", "GET, HEAD, POST"),
        ("PUT", "/v1/items/1", "GET, HEAD, PATCH, DELETE"),
        ("POST", "/v1/items/1", "GET, HEAD, PATCH, DELETE"),
        ("POST", "/v1/items:batch", "GET, HEAD"),
        ("POST", "/v1/items/export.csv", "GET, HEAD"),
        ("GET", "/v1/jobs", "POST"),
        ("HEAD", "/v1/jobs", "POST"),
        ("PATCH", f"/v1/jobs/{uuid.uuid4()}", "GET, HEAD, DELETE"),
        ("POST", "/readyz", "GET, HEAD"),
        ("DELETE", "/livez", "GET, HEAD"),
    ],
)
async def test_405_lists_every_method_the_path_serves(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, json=ITEM if method in {"PUT", "POST", "PATCH"} else None)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"
    assert "x-request-id" in response.headers


async def _raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_the_worker_probe_port_answers_head_like_get() -> None:
    async def ready() -> tuple[int, dict[str, str]]:
        return 200, {"status": "ok"}

    async def draining() -> tuple[int, dict[str, str]]:
        return 503, {"status": "stopping"}

    server = await ProbeServer({"/readyz": ready, "/livez": ready, "/startupz": draining}).serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for path in ["/readyz", "/livez", "/startupz", "/metrics", "/nowhere"]:
            get = await _raw_request(port, f"GET {path} HTTP/1.1\r\nHost: w\r\n\r\n".encode())
            head = await _raw_request(port, f"HEAD {path} HTTP/1.1\r\nHost: w\r\n\r\n".encode())
            get_head, _, get_body = get.partition(b"\r\n\r\n")
            head_head, _, head_body = head.partition(b"\r\n\r\n")
            assert get_body, path
            assert head_body == b"", path
            if path == "/metrics":  # two scrapes differ in length (the counters moved)
                get_head, head_head = (
                    b"\r\n".join(line for line in h.split(b"\r\n") if not line.startswith(b"Content-Length"))
                    for h in (get_head, head_head)
                )
            assert head_head == get_head, path  # status line, Content-Length and every other header
        refused = await _raw_request(port, b"POST /readyz HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 405 ")
        assert b"\r\nAllow: GET, HEAD\r\n" in refused
    finally:
        server.close()
        await server.wait_closed()
