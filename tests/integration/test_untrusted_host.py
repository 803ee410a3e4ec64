"""No response carries a URL built from the client's Host header; a trailing slash is another path (404)."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.items import ITEM

EVIL = {"Host": "attacker.invalid"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/items/"),
        ("GET", "/v1/items/1/"),
        ("PATCH", "/v1/items/1/"),
        ("DELETE", "/v1/items/1/"),
        ("POST", "/v1/items/"),
        ("GET", "/v1/items/export.csv/"),
        ("GET", "/v1/items:batch/?ids=1"),
        ("POST", "/v1/jobs/"),
        ("GET", "/readyz/"),
        ("GET", "/livez/"),
        ("GET", "/startupz/"),
        ("GET", "/docs/"),
        ("GET", "/openapi.json/"),
        ("HEAD", "/v1/items/"),
        ("GET", "//v1/items"),
    ],
)
async def test_a_trailing_slash_is_a_404_problem_not_a_redirect(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert (await client.post("/v1/items", json=ITEM)).status_code == 201
    response = await client.request(method, path, headers=EVIL, json=ITEM if method in {"POST", "PATCH"} else None)
    assert response.status_code == 404, response.headers
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"
    assert "attacker.invalid" not in response.text


async def test_no_header_or_body_mentions_the_host_the_client_sent(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/items", json=ITEM, headers=EVIL)
    job = await client.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1}}, headers=EVIL)
    assert created.headers["location"] == f"/v1/items/{created.json()['id']}"  # relative
    assert job.headers["location"] == f"/v1/jobs/{job.json()['id']}"
    responses = [created, job]
    for method, path in [
        ("GET", "/v1/items"),
        ("GET", "/v1/items/1"),
        ("GET", "/v1/items/999"),
        ("GET", "/v1/items:batch?ids=1"),
        ("GET", "/v1/items/export.csv"),
        ("PUT", "/v1/items"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/readyz"),
        ("GET", "/nowhere"),
    ]:
        responses.append(await client.request(method, path, headers=EVIL))
    for response in responses:
        assert "attacker.invalid" not in str(response.headers), (response.request.url, response.headers)
        assert "attacker.invalid" not in response.text, response.request.url
