"""Bad input gets problem+json with the right status, and the database is unchanged after each."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fixtures.backends import ROUTES
from tests.fixtures.items import ITEM, snapshot

# Directly and through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction).
DATABASE_ROUTES = ROUTES

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
TEN_MB = b"x" * (10 * 1024 * 1024)


def chunks(data: bytes, size: int = 65536) -> Any:
    async def gen() -> Any:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return gen()


_json = {"content-type": "application/json"}

# Numbers are ASCII digits and nothing else (issue: superscript two passed str.isdigit() and int() raised: 500).
NOT_NUMBERS = {
    "superscript two": "\u00b2",
    "arabic-indic three": "\u0663",
    "full-width one": "\uff11",
    "plus sign": "+1",
    "leading space": " 1",
    "trailing space": "1 ",
    "underscore": "1_000",
    "decimal point": "1.0",
    "exponent": "1e3",
    "negative": "-1",
    "empty": "",
    "beyond bigint": str(2**63),
    "beyond int() digits": "9" * 5000,
}


def _sender(method: str, url: str, **kwargs: Any) -> Request:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.request(method, url, **kwargs)

    return send


def _number_cases() -> dict[str, tuple[Request, int]]:
    cases: dict[str, tuple[Request, int]] = {}
    for name, text in NOT_NUMBERS.items():
        batch_status = 422 if name == "beyond int() digits" else 400  # (longer than the ids parameter may be)
        cases[f"batch id: {name}"] = (
            _sender("GET", "/v1/items:batch", params={"ids": f"1,{text}"}),
            batch_status,
        )
        if name != "beyond int() digits":  # (past the request-line limit: 414)
            cases[f"limit: {name}"] = (_sender("GET", "/v1/items", params={"limit": text}), 422)
        # Paths take [0-9]+ only: anything else is no such resource; digits past bigint are a 422.
        path_status = 422 if name == "beyond bigint" else 404
        if name not in {"empty", "beyond int() digits"}:
            cases[f"item id: {name}"] = (_sender("GET", f"/v1/items/{text}"), path_status)
            cases[f"patch id: {name}"] = (_sender("PATCH", f"/v1/items/{text}", json={"stock": 1}), path_status)
        if name not in {"empty", "leading space", "trailing space"}:  # (h11/httpx refuse those themselves)
            cases[f"content-length: {name}"] = (
                _sender("POST", "/v1/items", content=b"{}", headers={**_json, "content-length": text.encode()}),
                413 if name in {"beyond int() digits", "beyond bigint"} else 400,
            )
    cases["batch id zero"] = (lambda c: c.get("/v1/items:batch", params={"ids": "0"}), 400)
    cases["batch id with spaces"] = (lambda c: c.get("/v1/items:batch", params={"ids": "1, 2"}), 400)
    cases["batch empty id"] = (lambda c: c.get("/v1/items:batch", params={"ids": "1,,2"}), 400)
    cases["cursor with a stray character"] = (lambda c: c.get("/v1/items", params={"cursor": "A" * 32 + "!"}), 400)
    cases["cursor with non-ascii"] = (lambda c: c.get("/v1/items", params={"cursor": "\u0663" * 32}), 400)
    return cases


NUMBER_CASES = _number_cases()

CASES: dict[str, tuple[Request, int]] = {
    "malformed json": (lambda c: c.post("/v1/items", content=b'{"sku": "a",', headers=_json), 400),
    "wrong type": (lambda c: c.post("/v1/items", json={**ITEM, "price_cents": "1999"}), 422),
    "bool is not an int": (lambda c: c.post("/v1/items", json={**ITEM, "stock": True}), 422),
    "unknown field": (lambda c: c.post("/v1/items", json={**ITEM, "colour": "red"}), 422),
    "missing field": (lambda c: c.post("/v1/items", json={"sku": "x"}), 422),
    "negative price": (lambda c: c.post("/v1/items", json={**ITEM, "price_cents": -1}), 422),
    "overflowing stock": (lambda c: c.post("/v1/items", json={**ITEM, "stock": 2**31}), 422),
    "blank name": (lambda c: c.post("/v1/items", json={**ITEM, "name": "   "}), 422),
    "json array body": (lambda c: c.post("/v1/items", json=[ITEM]), 422),
    "empty body": (lambda c: c.post("/v1/items", content=b"", headers=_json), 422),
    "text/plain body": (lambda c: c.post("/v1/items", content=b"sku=x", headers={"content-type": "text/plain"}), 415),
    "form body": (lambda c: c.post("/v1/items", data={"sku": "x"}), 415),
    "10 MB body": (lambda c: c.post("/v1/items", content=TEN_MB, headers=_json), 413),
    "10 MB chunked body": (lambda c: c.post("/v1/items", content=chunks(TEN_MB), headers=_json), 413),
    "limit 0": (lambda c: c.get("/v1/items", params={"limit": 0}), 422),
    "limit 1000": (lambda c: c.get("/v1/items", params={"limit": 1000}), 422),
    "limit not a number": (lambda c: c.get("/v1/items", params={"limit": "ten"}), 422),
    "tampered cursor": (lambda c: c.get("/v1/items", params={"cursor": "AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAA"}), 400),
    "garbage cursor": (lambda c: c.get("/v1/items", params={"cursor": "%%%not-base64"}), 400),
    "unknown id": (lambda c: c.get("/v1/items/424242"), 404),
    "id not a number": (lambda c: c.get("/v1/items/abc"), 404),  # no such resource path
    "id zero": (lambda c: c.get("/v1/items/0"), 422),
    "id beyond bigint": (lambda c: c.get(f"/v1/items/{2**63}"), 422),
    "patch unknown id": (lambda c: c.patch("/v1/items/424242", json={"stock": 1}), 404),
    "patch nothing": (lambda c: c.patch("/v1/items/1", json={}), 422),
    "patch null": (lambda c: c.patch("/v1/items/1", json={"name": None}), 422),
    "patch sku (immutable)": (lambda c: c.patch("/v1/items/1", json={"sku": "other"}), 422),
    "patch wrong type": (lambda c: c.patch("/v1/items/1", json={"stock": "5"}), 422),
    "patch text/plain": (
        lambda c: c.patch("/v1/items/1", content=b"stock=5", headers={"content-type": "text/plain"}),
        415,
    ),
    "delete unknown id": (lambda c: c.delete("/v1/items/424242"), 404),
    "batch too many ids": (lambda c: c.get("/v1/items:batch", params={"ids": ",".join(map(str, range(1, 102)))}), 400),
    "batch non-numeric id": (lambda c: c.get("/v1/items:batch", params={"ids": "1,abc"}), 400),
    "batch no ids": (lambda c: c.get("/v1/items:batch"), 422),
    "unknown route": (lambda c: c.get("/v1/nothing-here"), 404),
    **NUMBER_CASES,
    "wrong method": (lambda c: c.put("/v1/items/1", json=ITEM), 405),
    "request line too long": (lambda c: c.get("/v1/items", params={"cursor": "a" * 9000}), 414),
    "too many headers": (lambda c: c.get("/v1/items", headers={f"x-h{n}": "v" for n in range(150)}), 431),
}


@pytest.mark.parametrize("case", CASES.keys())
async def test_bad_input_is_a_problem_and_changes_nothing(
    case: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    assert (await client.post("/v1/items", json=ITEM)).status_code == 201
    before = await snapshot(db)
    send, status = CASES[case]

    response = await send(client)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["type"]
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text
    assert await snapshot(db) == before


async def test_validation_problems_name_the_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/items", json={**ITEM, "price_cents": "1999", "colour": "red"})
    locations = {tuple(error["location"]) for error in response.json()["errors"]}
    assert ("body", "price_cents") in locations
    assert ("body", "colour") in locations


async def test_duplicate_sku_is_a_conflict_and_keeps_the_original(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await client.post("/v1/items", json=ITEM)
    before = await snapshot(db)
    second = await client.post("/v1/items", json={**ITEM, "name": "Another hammer"})
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    assert ITEM["sku"] in second.json()["detail"]
    assert await snapshot(db) == before
    assert (await client.get(first.headers["location"])).json()["name"] == ITEM["name"]


async def test_a_real_cursor_with_its_id_edited_is_refused(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    for n in range(3):
        await client.post("/v1/items", json={**ITEM, "sku": f"s{n}"})
    cursor = (await client.get("/v1/items", params={"limit": 1})).json()["next_cursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[7] ^= 0x02  # id 1 -> id 3: a client trying to skip ahead
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    response = await client.get("/v1/items", params={"limit": 1, "cursor": forged})
    assert response.status_code == 400
    assert response.json()["type"] == "/problems/invalid-cursor"
    # The genuine cursor still works.
    assert (await client.get("/v1/items", params={"limit": 1, "cursor": cursor})).json()["items"][0]["id"] == 2
