"""The items API over HTTP against the real app, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import asyncpg
import httpx

from service.items import repository
from tests.fixtures.backends import ROUTES
from tests.fixtures.items import ITEM, seed

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES


async def test_create_get_update_delete(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/items", json=ITEM)
    assert created.status_code == 201
    body = created.json()
    assert {key: body[key] for key in ITEM} == ITEM
    assert created.headers["location"] == f"/v1/items/{body['id']}"
    assert body["created_at"] == body["updated_at"]

    fetched = await client.get(f"/v1/items/{body['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == body

    patched = await client.patch(f"/v1/items/{body['id']}", json={"stock": 0, "price_cents": 2500})
    assert patched.status_code == 200
    updated = patched.json()
    assert (updated["stock"], updated["price_cents"], updated["name"]) == (0, 2500, ITEM["name"])
    assert updated["updated_at"] > body["updated_at"]
    assert (await client.get(f"/v1/items/{body['id']}")).json() == updated

    deleted = await client.delete(f"/v1/items/{body['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    gone = await client.get(f"/v1/items/{body['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


async def test_keyset_pagination_walks_every_item_once(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await seed(db, 25)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10} if cursor is None else {"limit": 10, "cursor": cursor}
        response = await client.get("/v1/items", params=params)
        assert response.status_code == 200
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(range(1, 26))


async def test_pagination_sees_rows_inserted_behind_and_ahead_of_the_cursor(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await seed(db, 4)
    first = (await client.get("/v1/items", params={"limit": 2})).json()
    await db.execute("DELETE FROM items WHERE id = 3")
    await db.execute("INSERT INTO items (sku, name, category, price_cents, stock) VALUES ('late', 'Late', 'c', 1, 1)")
    second = (await client.get("/v1/items", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [item["id"] for item in second["items"]] == [4, 5]


async def test_default_and_maximum_page_size(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await seed(db, 150)
    assert len((await client.get("/v1/items")).json()["items"]) == 20
    full = (await client.get("/v1/items", params={"limit": 100})).json()
    assert len(full["items"]) == 100
    assert full["next_cursor"] is not None


async def test_empty_catalog_lists_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/items")
    assert response.json() == {"items": [], "next_cursor": None}


async def test_batch_get_keeps_request_order_and_reports_missing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await seed(db, 5)
    response = await client.get("/v1/items:batch", params={"ids": "4,999,2,4"})
    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [4, 2]
    assert body["missing"] == [999]


async def test_batch_get_is_one_query(db: asyncpg.Connection) -> None:
    await seed(db, 100)
    await repository.get_many(db, [1])  # asyncpg introspects the bigint[] codec once per connection
    statements: list[str] = []
    db.add_query_logger(lambda record: statements.append(record.query))
    rows = await repository.get_many(db, list(range(1, 101)))
    await asyncio.sleep(0.05)  # asyncpg calls query loggers on a later loop iteration
    assert len(rows) == 100
    assert len(statements) == 1
    assert "= ANY($1" in statements[0]


async def test_csv_export_streams_every_row(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await seed(db, 2500)
    await db.execute("UPDATE items SET name = 'Comma, \"quoted\" name' WHERE id = 7")
    async with client.stream("GET", "/v1/items/export.csv") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in response.headers["content-disposition"]
        text = (await response.aread()).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2500
    assert [int(row["id"]) for row in rows] == list(range(1, 2501))
    assert rows[6]["name"] == 'Comma, "quoted" name'
    assert rows[0].keys() == {"id", "sku", "name", "category", "price_cents", "stock", "created_at", "updated_at"}


async def test_csv_export_of_empty_catalog_is_just_the_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/items/export.csv")
    assert response.text == "id,sku,name,category,price_cents,stock,created_at,updated_at\r\n"  # RFC 4180: CRLF


async def test_request_id_is_taken_from_the_proxy_or_generated(client: httpx.AsyncClient) -> None:
    given = await client.get("/v1/items", headers={"X-Request-ID": "edge-abc.123"})
    assert given.headers["x-request-id"] == "edge-abc.123"
    generated = await client.get("/v1/items", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(generated.headers["x-request-id"]) == 32
    other = await client.get("/v1/items")
    assert other.headers["x-request-id"] != generated.headers["x-request-id"]
