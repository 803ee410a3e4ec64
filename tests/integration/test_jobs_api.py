"""/v1/jobs against real PostgreSQL: enqueue, idempotent retries, cancel, and every bad input as problem+json."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fixtures.backends import ROUTES
from tests.fixtures.keys import READER_KEY

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES

BURN = {"kind": "cpu.burn", "params": {"milliseconds": 5}}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_post_records_the_job_and_answers_202_with_its_location(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await client.post("/v1/jobs", json=BURN, headers={"X-Request-ID": "req-42", "traceparent": traceparent})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["attempts"] == 0
    assert job["max_attempts"] == 5
    assert job["params"] == {"milliseconds": 5, "fail_attempts": 0}  # normalised: defaults filled in
    assert job["request_id"] == "req-42"
    row = await db.fetchrow(
        "SELECT kind, request_id, traceparent, created_by FROM jobs WHERE id = $1", uuid.UUID(job["id"])
    )
    assert row is not None
    assert dict(row) == {
        "kind": "cpu.burn",
        "request_id": "req-42",
        "traceparent": traceparent,
        "created_by": "test-writer",
    }

    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == job


async def test_enqueue_wakes_listening_workers(client: httpx.AsyncClient, backends: Any) -> None:
    listener = await asyncpg.connect(backends.database_url)
    notified: list[str] = []
    await listener.add_listener("jobs", lambda *args: notified.append(args[3]))
    try:
        response = await client.post("/v1/jobs", json=BURN)
        assert response.status_code == 202
        for _ in range(50):
            if notified:
                break
            await listener.execute("SELECT 1")  # notifications arrive with the next message
        assert notified == ["cpu.burn"]
    finally:
        await listener.close()


async def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    key = {"Idempotency-Key": "order-7f3a"}
    first = await client.post("/v1/jobs", json=BURN, headers=key)
    again = await client.post("/v1/jobs", json=BURN, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # Same meaning, spelled differently (a default made explicit): still the same request.
    explicit = {"kind": "cpu.burn", "params": {"milliseconds": 5, "fail_attempts": 0}}
    assert (await client.post("/v1/jobs", json=explicit, headers=key)).json()["id"] == first.json()["id"]

    other = await client.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 6}}, headers=key)
    assert assert_problem(other, 422)["type"] == "/problems/idempotency-key-reused"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_cancel_a_queued_job_then_not_again(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job = (await client.post("/v1/jobs", json=BURN)).json()
    cancelled = await client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_problem(await client.delete(f"/v1/jobs/{job['id']}"), 409)
    await db.execute("UPDATE jobs SET state = 'succeeded' WHERE id = $1", uuid.UUID(job["id"]))
    assert "succeeded" in assert_problem(await client.delete(f"/v1/jobs/{job['id']}"), 409)["detail"]


@pytest.mark.parametrize(
    ("body", "status", "location"),
    [
        ({"kind": "no.such.kind", "params": {}}, 422, ["body", "kind"]),
        ({"kind": "cpu.burn", "params": {}}, 422, ["body", "params", "milliseconds"]),
        ({"kind": "cpu.burn", "params": {"milliseconds": -1}}, 422, ["body", "params", "milliseconds"]),
        ({"kind": "cpu.burn", "params": {"milliseconds": "200"}}, 422, ["body", "params", "milliseconds"]),
        ({"kind": "cpu.burn", "params": {"milliseconds": 10_000_000}}, 422, ["body", "params", "milliseconds"]),
        ({"kind": "cpu.burn", "params": {"milliseconds": 1, "colour": "red"}}, 422, ["body", "params", "colour"]),
        ({"kind": "catalog.report", "params": {"percentiles": [101]}}, 422, ["body", "params", "percentiles", "0"]),
        ({"kind": "cpu.burn", "params": {"milliseconds": 1}, "priority": 1}, 422, ["body", "priority"]),
        ({"params": {}}, 422, ["body", "kind"]),
        ({"kind": "cpu.burn", "params": [1]}, 422, ["body", "params"]),
    ],
)
async def test_invalid_job_requests_are_422_naming_the_field(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, Any], status: int, location: list[str]
) -> None:
    problem = assert_problem(await client.post("/v1/jobs", json=body), status)
    assert location in [error["location"] for error in problem["errors"]], problem
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", f"/v1/jobs/{uuid.uuid4()}", {}, 404),
        ("DELETE", f"/v1/jobs/{uuid.uuid4()}", {}, 404),
        ("GET", "/v1/jobs/not-a-uuid", {}, 404),
        ("POST", "/v1/jobs", {"Authorization": ""}, 401),
        ("POST", "/v1/jobs", {"Authorization": f"Bearer {READER_KEY}"}, 403),
        ("POST", "/v1/jobs", {"Idempotency-Key": " padded "}, 422),
        ("POST", "/v1/jobs", {"Idempotency-Key": "k" * 201}, 422),
        ("POST", "/v1/jobs", {"content-type": "text/plain"}, 415),
    ],
)
async def test_unknown_ids_and_refused_requests_are_problems(
    client: httpx.AsyncClient, db: asyncpg.Connection, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    body = b'{"kind": "cpu.burn", "params": {"milliseconds": 1}}' if method == "POST" else None
    request_headers = {"content-type": "application/json", **headers}
    response = await client.request(method, path, content=body, headers=request_headers)
    assert_problem(response, status)
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
