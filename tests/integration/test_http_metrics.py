"""HTTP metrics: route templates, exact statuses, probes excluded, bounded cardinality."""

from __future__ import annotations

import asyncio
import random
import string

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from service.app import create_app
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.items import ITEM


def count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "http_server_request_duration_seconds_count",
        {"http_route": route, "http_request_method": method, "http_response_status_code": status},
    )
    return value or 0.0


def route_labels() -> set[str]:
    return {
        sample.labels["http_route"]
        for metric in REGISTRY.collect()
        if metric.name == "http_server_request_duration_seconds"
        for sample in metric.samples
    }


async def test_requests_are_counted_by_route_template_and_exact_status(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = {
        "created": count("/v1/items", "POST", "201"),
        "found": count("/v1/items/{item_id}", "GET", "200"),
        "missing": count("/v1/items/{item_id}", "GET", "404"),
        "invalid": count("/v1/items", "POST", "422"),
        "unmatched": count("__unmatched__", "GET", "404"),
    }
    item_id = (await client.post("/v1/items", json=ITEM)).json()["id"]
    await client.get(f"/v1/items/{item_id}")
    await client.get("/v1/items/987654")
    await client.post("/v1/items", json={"sku": "x"})
    await client.get("/no/such/path")
    assert count("/v1/items", "POST", "201") - before["created"] == 1
    assert count("/v1/items/{item_id}", "GET", "200") - before["found"] == 1
    assert count("/v1/items/{item_id}", "GET", "404") - before["missing"] == 1
    assert count("/v1/items", "POST", "422") - before["invalid"] == 1
    assert count("__unmatched__", "GET", "404") - before["unmatched"] == 1
    assert f"/v1/items/{item_id}" not in route_labels()


async def test_probes_are_not_measured(client: httpx.AsyncClient) -> None:
    for probe in ("/livez", "/readyz", "/startupz"):
        await client.get(probe)
    assert not {"/livez", "/readyz", "/startupz"} & route_labels()


async def test_an_exception_is_a_500_and_counted_by_type(backends: Backends) -> None:
    app = create_app(make_settings(backends))

    async def explode() -> None:
        raise LookupError("boom")

    app.add_api_route("/explode", explode)
    before = count("/explode", "GET", "500")
    exceptions_before = (
        REGISTRY.get_sample_value(
            "http_server_exceptions_total", {"http_route": "/explode", "exception_type": "LookupError"}
        )
        or 0.0
    )
    async with lifespan_client(app) as client:
        assert (await client.get("/explode")).status_code == 500
    assert count("/explode", "GET", "500") - before == 1
    exceptions_after = REGISTRY.get_sample_value(
        "http_server_exceptions_total", {"http_route": "/explode", "exception_type": "LookupError"}
    )
    assert exceptions_after == exceptions_before + 1


async def test_ten_thousand_random_paths_add_one_series(client: httpx.AsyncClient) -> None:
    rng = random.Random(7)
    paths = ["/" + "".join(rng.choices(string.ascii_lowercase + "/", k=12)) for _ in range(10_000)]
    series_before = len(route_labels())
    for start in range(0, len(paths), 200):
        await asyncio.gather(*(client.get(path) for path in paths[start : start + 200]))
    assert len(route_labels()) - series_before <= 1  # at most `__unmatched__` is new


@pytest.mark.parametrize("method", ["BREW", "PROPFIND"])
async def test_unknown_methods_share_one_label(client: httpx.AsyncClient, method: str) -> None:
    before = count("__unmatched__", "_OTHER", "404") + count("/v1/items", "_OTHER", "405")
    await client.request(method, "/v1/items")
    after = count("__unmatched__", "_OTHER", "404") + count("/v1/items", "_OTHER", "405")
    assert after - before == 1
