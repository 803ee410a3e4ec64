"""The edge's own error pages: problem+json whose status is the status line's, with the request id.

nginx answers some requests itself: malformed framing it will not pass on, bodies over the
limit, and requests no pod answered. Clients and the API's own errors speak RFC 9457;
nginx's default pages are HTML, and a body that says another status than the status
line misleads every client that reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
import pytest

from tests.fixtures.edge import Edge
from tests.fixtures.processes import ApiProcess
from tests.fixtures.wire import RawConnection

pytestmark = pytest.mark.e2e

MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v1/items HTTP/1.1\r\nHost: edge\r\nno colon here\r\n\r\n", 400),
    (b"GET /v1/items HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET /v1/items HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: edge\r\n\r\n", 414),
    (b"GET /v1/items HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    (b"POST /v1/items HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /v1/items HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
    (b"GET /v1/items HTTP/3.0\r\nHost: edge\r\n\r\n", 505),
    (b"POST /v1/items HTTP/1.1\r\nHost: edge\r\nContent-Length: 5000000\r\n\r\n", 413),
]


async def _answer(edge: Edge, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    async with await RawConnection.open(int(edge.url.rsplit(":", 1)[1])) as connection:
        answer = await connection.exchange(raw, method="GET")
    return answer.status, answer.headers, answer.body


def _assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, body[:200]
    assert headers["content-type"] == "application/problem+json", (status, headers, body[:200])
    problem = orjson.loads(body)
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert headers.get("x-request-id"), headers


async def test_malformed_requests_get_a_problem_from_the_edge(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    edge = start_edge([start_api()])
    for raw, expected in MALFORMED:
        status, headers, body = await _answer(edge, raw)
        assert (status, headers.get("content-type")) == (expected, "application/problem+json"), (raw[:50], body[:200])
        _assert_problem(status, headers, body, expected)
    # The pages themselves are internal: asked for directly, they are a 404 problem.
    _assert_problem(*await _answer(edge, b"GET /_edge/502 HTTP/1.1\r\nHost: edge\r\n\r\n"), 404)


async def test_no_pod_answering_is_a_502_problem_that_says_502(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    api = start_api()
    edge = start_edge([api])
    api.stop()
    status, headers, body = await _answer(edge, b"GET /v1/items HTTP/1.1\r\nHost: edge\r\n\r\n")
    _assert_problem(status, headers, body, 502)
    assert headers["retry-after"] == "1"


async def test_a_request_the_pod_cannot_parse_is_a_problem_too(start_api: Callable[..., ApiProcess]) -> None:
    """Behind nginx a pod never sees one; a client that reaches the pod directly gets the same shape."""
    api = start_api()
    for raw in (b"GARBAGE\r\n\r\n", b"GET /v1/items HTTP/1.1\r\nHost: pod\r\nno colon here\r\n\r\n"):
        async with await RawConnection.open(api.port) as connection:
            answer = await connection.exchange(raw, method="GET")
            assert answer.status == 400
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["connection"] == "close"
            problem = orjson.loads(answer.body)
            assert (problem["status"], problem["title"]) == (400, "Bad Request")
            assert await connection.closed_by_server(2)
