"""Text is stored in one Unicode form (NFC), so one category is one row of catalog.report; sku case is exact.

"Café" can arrive precomposed (U+00E9) or decomposed ("e" + U+0301): it looks the same and
compared different, so catalog.report showed one category as two rows.
"""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Any

import asyncpg
import httpx
import pytest

from service.jobs.kinds import CatalogReportParams, JobContext, catalog_report
from tests.fixtures.backends import Backends

COMPOSED = "Caf\u00e9"
DECOMPOSED = "Cafe\u0301"


def _item(n: int, **changes: Any) -> dict[str, Any]:
    return {"sku": f"u-{n}", "name": f"item {n}", "category": "c", "price_cents": 100 * n, "stock": 1, **changes}


async def _report(backends: Backends) -> dict[str, Any]:
    context = JobContext(job_id="test", attempt=1, database_url=backends.database_url)
    return await asyncio.to_thread(catalog_report, CatalogReportParams.model_validate({}), context)


def test_the_two_forms_differ_as_sent() -> None:
    assert COMPOSED != DECOMPOSED
    assert unicodedata.normalize("NFC", DECOMPOSED) == COMPOSED


async def test_text_sent_in_either_form_is_stored_and_reported_as_one(
    client: httpx.AsyncClient, db: asyncpg.Connection, backends: Backends
) -> None:
    for n, form in enumerate((COMPOSED, DECOMPOSED, COMPOSED, DECOMPOSED), start=1):
        created = await client.post("/v1/items", json=_item(n, name=f"{form} {n}", category=form))
        assert created.status_code == 201, created.text
        assert created.json()["category"] == COMPOSED
        assert created.json()["name"] == f"{COMPOSED} {n}"
    patched = await client.patch("/v1/items/1", json={"category": f" {DECOMPOSED} ", "name": DECOMPOSED})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["category"], patched.json()["name"]) == (COMPOSED, COMPOSED)
    assert await db.fetchval("SELECT count(DISTINCT category) FROM items") == 1
    assert await db.fetchval("SELECT bool_and(category IS NFC NORMALIZED AND name IS NFC NORMALIZED) FROM items")
    report = await _report(backends)
    assert [(row["category"], row["items"]) for row in report["by_category"]] == [(COMPOSED, 4)]


async def test_rows_stored_before_normalisation_are_reported_as_one_category(
    db: asyncpg.Connection, backends: Backends
) -> None:
    # As a table written before the API normalised text holds them: both forms, side by side.
    await db.executemany(
        "INSERT INTO items (sku, name, category, price_cents, stock) VALUES ($1, 'x', $2, $3, 2)",
        [("old-1", COMPOSED, 100), ("old-2", DECOMPOSED, 300), ("old-3", "Tea", 50)],
    )
    report = await _report(backends)
    rows = {row["category"]: row for row in report["by_category"]}
    assert set(rows) == {COMPOSED, "Tea"}
    assert rows[COMPOSED]["items"] == 2
    assert rows[COMPOSED]["price_cents"]["min"] == 100
    assert rows[COMPOSED]["price_cents"]["max"] == 300
    assert rows[COMPOSED]["stock_value_cents"] == 800
    assert report["categories"] == 2


@pytest.mark.parametrize(
    ("first", "second", "status"), [("W-1", "w-1", 201), ("w-1", "w-1", 409), ("w-1", " w-1 ", 409)]
)
async def test_a_sku_is_compared_exactly_case_included(
    client: httpx.AsyncClient, first: str, second: str, status: int
) -> None:
    assert (await client.post("/v1/items", json=_item(1, sku=first))).status_code == 201
    assert (await client.post("/v1/items", json=_item(2, sku=second))).status_code == status


async def test_a_sku_outside_ascii_is_refused_rather_than_normalised(client: httpx.AsyncClient) -> None:
    for sku in (f"{COMPOSED}-1", "\uff37-1", "W\u20131"):  # accented, full-width W, en dash
        response = await client.post("/v1/items", json=_item(1, sku=sku))
        assert response.status_code == 422, (sku, response.text)
        assert response.json()["errors"][0]["location"] == ["body", "sku"]
