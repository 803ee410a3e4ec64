"""The CSV export is RFC 4180 for every value the API accepts, with spreadsheet formulas neutralised."""

from __future__ import annotations

import csv
import io

import asyncpg
import httpx

from tests.fixtures.backends import ROUTES
from tests.fixtures.items import ITEM

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES

AWKWARD = [
    "plain",
    'say "hi"',
    'ends with a quote"',
    "comma, inside",
    "line one\nline two",
    "bare\rcarriage return",  # the example: written unquoted, the file no longer parsed
    "crlf\r\ninside",
    "ünïcødé ✓ 漢字 🙂",
    "=1+2",
    "+SUM(A1:A9)",
    "-2+3",
    "@SUM(1)",
    '=HYPERLINK("http://attacker.invalid","click")',
    "=cmd|' /C calc'!A0",
    "'already quoted",
    "a=b (not leading)",
    "x\t=tab inside",
]
SKUS = ["-leading-minus", "plain.sku", "_under"]
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _stored(cell: str) -> str:
    """The documented way back: drop one leading apostrophe from a text cell."""
    return cell[1:] if cell.startswith("'") else cell


async def test_awkward_values_round_trip_through_the_csv_module(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    created = []
    for n, name in enumerate(AWKWARD):
        body = {**ITEM, "sku": f"s-{n}", "name": name, "category": AWKWARD[-1 - n]}
        response = await client.post("/v1/items", json=body)
        assert response.status_code == 201, (name, response.text)
        created.append(response.json())
    for n, sku in enumerate(SKUS):
        created.append((await client.post("/v1/items", json={**ITEM, "sku": sku, "name": f"n{n}"})).json())
    # Text the API strips at its edges can still be in the table (another writer): a leading tab or CR.
    await db.execute(
        "INSERT INTO items (sku, name, category, price_cents, stock) VALUES ('raw', E'\\t=1+1', E'\\r@x', 0, 0)"
    )

    response = await client.get("/v1/items/export.csv")
    assert response.status_code == 200
    raw = response.content
    assert raw.startswith(b"id,sku,name,category,price_cents,stock,created_at,updated_at\r\n")
    assert raw.endswith(b"\r\n")

    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), strict=True)
    _header, *rows = list(reader)
    assert len(rows) == len(created) + 1
    for row, item in zip(rows, created, strict=False):
        assert int(row[0]) == item["id"]
        assert [_stored(cell) for cell in row[1:4]] == [item["sku"], item["name"], item["category"]]
        assert (int(row[4]), int(row[5])) == (item["price_cents"], item["stock"])  # numbers stay numbers
    assert [_stored(cell) for cell in rows[-1][1:4]] == ["raw", "\t=1+1", "\r@x"]
    for row in rows:
        for cell in row[1:4]:
            assert not cell.startswith(TRIGGERS), cell  # a spreadsheet shows text, never runs it
    # Every record ends in CRLF; a CR or LF inside a value only ever appears between quotes.
    assert raw.count(b"\r\n") >= len(rows) + 1


async def test_only_text_cells_are_prefixed(client: httpx.AsyncClient) -> None:
    await client.post("/v1/items", json={**ITEM, "name": "-5", "category": "+7", "price_cents": 0, "stock": 0})
    text = (await client.get("/v1/items/export.csv")).text
    [row] = list(csv.DictReader(io.StringIO(text, newline="")))
    assert (row["name"], row["category"]) == ("'-5", "'+7")
    assert (row["price_cents"], row["stock"]) == ("0", "0")
    assert row["created_at"][0].isdigit()
