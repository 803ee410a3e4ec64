"""A response that looks complete leaves its keep-alive connection usable: on a raw connection and through nginx.

nginx returns an upstream connection to its pool as soon as a response is complete by its
framing, and sends the next request on it. A pod that closes such a connection (uvicorn does
when the app raises after the response, or when the body disagrees with Content-Length) resets
that next request: nginx answers 502, marks the pod failed for `fail_timeout`, and never retries
a POST. The HEAD middleware once did exactly this for every HEAD.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import httpx
import orjson
import pytest
import servers  # deploy/local (tests/fixtures/__init__.py puts it on sys.path)
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from tests.fixtures.app import make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.edge import Edge, mixed_load
from tests.fixtures.keys import WRITER_KEY
from tests.fixtures.processes import ApiProcess
from tests.fixtures.wire import RawConnection, request

pytestmark = pytest.mark.e2e

# Lines nginx writes when an upstream broke a connection or was taken out of rotation.
UPSTREAM_FAULTS = ("reset by peer", "prematurely closed", "temporarily disabled", "no live upstreams", "upstream")
# What uvicorn logs when it closes a connection because of the app.
SERVER_FAULTS = ("Exception in ASGI application", "without completing response", "Content-Length")
AUTH = f"Bearer {WRITER_KEY}"
UNLIMITED = {"RATE_LIMIT_READS": "1000000/minute", "RATE_LIMIT_WRITES": "1000000/minute"}


def _item(sku: str) -> bytes:
    return orjson.dumps({"sku": sku, "name": "Keep", "category": "c", "price_cents": 1, "stock": 1})


def _cases(item_id: int, job: str) -> list[tuple[bytes, int]]:
    """Every kind of response the API gives, as (request, expected status): HEAD and errors above all."""
    json_headers = {"Content-Type": "application/json", "Authorization": AUTH}
    oversized = b'{"pad":"' + b"x" * 5000 + b'"}'
    chunk = b"x" * 3000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    cases = [
        (request(method, target), status)
        for target, status in [
            ("/v1/items?limit=1", 200),
            ("/livez", 200),
            ("/readyz", 200),
            ("/startupz", 200),
            (f"/v1/items/{item_id}", 200),
            ("/v1/items/999999", 404),
            ("/v1/items?limit=0", 422),
            (f"/v1/items:batch?ids={item_id},2", 200),
            ("/v1/items/export.csv", 200),
            (job, 200),
            ("/nowhere", 404),
            ("/openapi.json", 200),
        ]
        for method in ("GET", "HEAD")
    ]
    cases += [
        (request("HEAD", "/v1/jobs"), 405),
        (request("OPTIONS", "/v1/items"), 405),
        (request("POST", "/v1/items", body=_item("k-2"), headers={"Content-Type": "application/json"}), 401),
        (request("POST", "/v1/items", body=b"{not json", headers=json_headers), 400),
        (request("POST", "/v1/items", body=b"sku=1", headers={**json_headers, "Content-Type": "text/plain"}), 415),
        (request("POST", "/v1/items", body=oversized, headers=json_headers), 413),
        (request("POST", "/v1/items", headers={**json_headers, "Transfer-Encoding": "chunked"}) + chunked, 413),
        (request("POST", "/v1/items", body=_item("k-3"), headers={**json_headers, "Expect": "100-continue"}), 201),
        (request("PATCH", f"/v1/items/{item_id}", body=b'{"stock":2}', headers=json_headers), 200),
        (request("DELETE", f"/v1/items/{item_id}", headers={"Authorization": AUTH}), 204),
        (request("DELETE", f"/v1/items/{item_id}", headers={"Authorization": AUTH}), 404),
        (request("HEAD", f"/v1/items/{item_id}"), 404),
    ]
    return cases


async def test_every_kind_of_response_leaves_a_raw_keepalive_connection_usable(
    start_api: Callable[..., ApiProcess],
) -> None:
    api = start_api(MAX_BODY_BYTES="4096", **UNLIMITED)
    async with await RawConnection.open(api.port) as connection:
        json_headers = {"Content-Type": "application/json", "Authorization": AUTH}
        created = await connection.exchange(request("POST", "/v1/items", body=_item("k-1"), headers=json_headers))
        job = await connection.exchange(
            request("POST", "/v1/jobs", body=b'{"kind":"cpu.burn","params":{"milliseconds":1}}', headers=json_headers)
        )
        assert (created.status, job.status) == (201, 202)
        gets: dict[bytes, dict[str, str]] = {}
        for raw, status in _cases(orjson.loads(created.body)["id"], job.headers["location"]):
            method, target = raw.split(b" ")[:2]
            answer = await connection.exchange(raw)
            assert answer.status == status, (raw[:60], answer.status, answer.body[:200])
            assert "close" not in answer.headers.get("connection", ""), raw[:60]
            assert not await connection.closed_by_server(0.05), f"closed after {raw[:60]!r}"
            if method == b"GET":
                gets[target] = answer.headers
            elif method == b"HEAD" and target in gets and status == 200:
                # HEAD's framing is GET's: the same Content-Length, or the same absence of one.
                assert answer.headers.get("content-length") == gets[target].get("content-length"), target
            follow = await connection.exchange(request("GET", "/livez"))
            assert follow.status == 200, raw[:60]
    faults = [line for line in api.logs() if any(f in str(line.get("msg", "")) for f in SERVER_FAULTS)]
    assert faults == []


async def test_thousands_of_mixed_requests_on_one_raw_connection_to_a_pod(
    start_api: Callable[..., ApiProcess],
) -> None:
    """The issue's direct run in small: HEAD then GET on the same connection, again and again (bounded)."""
    api = start_api(**UNLIMITED)
    targets = ["/v1/items?limit=1", "/livez", "/v1/items/999999", "/readyz", "/v1/items?limit=0"]
    answered = 0
    async with await RawConnection.open(api.port) as connection:
        for n in range(1000):
            method = ("HEAD", "GET")[n % 2]
            answer = await connection.exchange(request(method, targets[(n // 2) % len(targets)]))
            assert answer.status < 500, (n, method, answer.status)
            answered += 1
        assert not await connection.closed_by_server(0.2)
    assert answered == 1000


def _upstream_faults(edge: Edge) -> list[str]:
    return edge.error_lines(*UPSTREAM_FAULTS)


def test_the_reported_sequence_through_nginx_keeps_every_pod_in_rotation(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    pods = [start_api(**UNLIMITED), start_api(**UNLIMITED)]
    edge = start_edge(pods)
    sequence = [
        ("GET", "/v1/items?limit=1"),
        ("HEAD", "/v1/items?limit=1"),
        ("GET", "/livez"),
        ("HEAD", "/livez"),
        ("GET", "/readyz"),
    ]
    statuses = []
    with httpx.Client(base_url=edge.url, timeout=10) as http:
        for _ in range(20):
            statuses += [(method, path, http.request(method, path).status_code) for method, path in sequence]
    assert [s for s in statuses if s[2] != 200] == []
    assert _upstream_faults(edge) == []


def test_a_head_flood_under_mixed_load_through_nginx_fails_nothing(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    pods = [start_api(**UNLIMITED), start_api(**UNLIMITED)]
    edge = start_edge(pods)
    started = time.monotonic()
    result = mixed_load(
        edge.url, {"HEAD": 4, "GET": 1, "POST": 2}, seconds=8, max_requests=6000, headers={"Authorization": AUTH}
    )
    elapsed = time.monotonic() - started
    print(f"HEAD flood through nginx, {elapsed:.1f} s: {result.summary()}; error log: {_upstream_faults(edge)}")
    assert result.answered.get("HEAD", 0) > 200, result.summary()  # the flood happened
    assert result.answered.get("POST", 0) > 20, result.summary()
    assert result.failures == []
    assert _upstream_faults(edge) == []


class _FailsAfterTheResponse:
    """A layer that raises once the response is out, as a failing access log or span exporter would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            raise RuntimeError("failed after the last byte")


@pytest.mark.parametrize("guarded", [True, False])
async def test_an_error_after_the_last_byte_leaves_the_connection_usable(backends: Backends, guarded: bool) -> None:
    """The kind beyond HEAD, on uvicorn itself: the app's own wrapper keeps such a connection open.

    Unguarded (the same app called below its wrapper), uvicorn closes the connection: the control.
    """
    app = create_app(make_settings(backends))
    app.add_middleware(_FailsAfterTheResponse)

    async def unguarded(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    port = servers.free_port()
    config = uvicorn.Config(app if guarded else unguarded, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    config.load()
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.02)
        async with await RawConnection.open(port) as connection:
            first = await connection.exchange(request("GET", "/livez"))
            assert first.status == 200
            assert await connection.closed_by_server(0.3) is not guarded
    finally:
        server.should_exit = True
        await serving
