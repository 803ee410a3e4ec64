"""Item endpoints under /v1/items. Thin: validate, call the repository, serialise.

Read paths answer with bytes serialised by orjson straight from the database
rows (no per-item Pydantic model on the hot path); the Pydantic models still
document the responses in OpenAPI.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BeforeValidator
from starlette.responses import Response, StreamingResponse

from service.auth import read_access, requires
from service.db import Database
from service.errors import BadRequest, NotFound, ServiceUnavailable
from service.guards import require_json_body
from service.items import repository
from service.items.schemas import Item, ItemBatch, ItemCreate, ItemPage, ItemUpdate
from service.numbers import ascii_int, parse_decimal
from service.pagination import decode_cursor, encode_cursor
from service.resilience import Bulkhead
from service.responses import GuardedStreamingResponse, StreamCut, StreamGuard, json_response
from service.state import CacheDep, ConnectionDep, DatabaseDep, ExportsDep, SettingsDep, State, readable_state

# The state, for a request allowed to read items: one dependency on the hot read paths.
_read_state = readable_state("items:read")
ReadStateDep = Annotated[State, Depends(_read_state)]
MAX_BATCH_IDS = 100
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The item's id.")]


router = APIRouter(prefix="/v1/items", tags=["items"])
_reads = [Depends(read_access("items:read"))]
# Authenticate first: a caller without a key learns nothing about the body's problems.
_writes = [requires("items:write")]
_writes_json = [*_writes, Depends(require_json_body)]


def _item(row: repository.Row) -> dict[str, Any]:
    return dict(row.items())


# First: the hottest route. FastAPI tries routes in order (at every router level),
# and the `:int` convertor keeps it from shadowing /export.csv below.
@router.get("/{item_id:int}", response_model=Item)
async def get_item(item_id: ItemId, request: Request) -> Response:
    # Called, not declared as a dependency: FastAPI's dependency resolution was a fifth of a
    # cache hit's CPU (bench/results/request_path.md). No ConnectionDep either: a cache hit
    # must not borrow a pool connection.
    state = await _read_state(request)

    async def load() -> bytes | None:
        async with state["db"].connection() as conn:
            row = await repository.get(conn, item_id)
        return None if row is None else orjson.dumps(_item(row))

    cache = state["cache"]
    body = await cache.get(str(item_id), load) if cache is not None else await load()
    if body is None:
        raise NotFound(f"Item {item_id} does not exist.")
    return Response(body, media_type="application/json")


@router.post(
    "",
    status_code=201,
    response_model=Item,
    dependencies=_writes_json,
    responses={409: {"description": "An item with this sku exists."}},
)
async def create_item(body: ItemCreate, conn: ConnectionDep) -> Response:
    row = await repository.create(conn, **body.model_dump())
    return json_response(_item(row), status=201, headers={"Location": f"/v1/items/{row['id']}"})


@router.get("", response_model=ItemPage)
async def list_items(
    state: ReadStateDep,
    limit: Annotated[int, BeforeValidator(ascii_int), Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> Response:
    key = state["settings"].secret_key.get_secret_value().encode()
    after_id = decode_cursor(key, cursor) if cursor else 0
    async with state["db"].connection() as conn:
        rows = await repository.page_after(conn, after_id, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(key, rows[-1]["id"]) if more else None
    return json_response({"items": [_item(row) for row in rows], "next_cursor": next_cursor})


def _parse_ids(raw: str) -> list[int]:
    ids: list[int] = []
    for part in raw.split(","):
        item_id = parse_decimal(part)
        if not item_id:  # None (not 1-19 ASCII digits, or past bigint) or 0
            raise BadRequest(f"ids must be comma-separated positive integers (ASCII digits); got {part[:32]!r}.")
        ids.append(item_id)
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_BATCH_IDS:
        raise BadRequest(f"At most {MAX_BATCH_IDS} ids per request.")
    return unique


@router.get(":batch", response_model=ItemBatch, dependencies=_reads)
async def batch_get_items(
    conn: ConnectionDep,
    ids: Annotated[str, Query(min_length=1, max_length=2200, description="Comma-separated ids, at most 100.")],
) -> Response:
    wanted = _parse_ids(ids)
    found = {row["id"]: row for row in await repository.get_many(conn, wanted)}
    return json_response(
        {
            "items": [_item(found[item_id]) for item_id in wanted if item_id in found],
            "missing": [item_id for item_id in wanted if item_id not in found],
        }
    )


@router.get(
    "/export.csv",
    dependencies=_reads,
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "Every item, as CSV."}},
)
async def export_items(db: DatabaseDep, exports: ExportsDep, settings: SettingsDep) -> StreamingResponse:
    guard = StreamGuard(settings.export_max_seconds)
    chunks = _export_csv(db, exports, guard)
    # Start the export before answering, so a full bulkhead, a saturated pool or a
    # database error is a 503 problem rather than a 200 with a truncated body.
    header = await anext(chunks)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield header
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # stopped early (client gone, HEAD answered, cut): the connection goes back now

    return GuardedStreamingResponse(
        body(),
        guard,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="items.csv"'},
    )


async def _export_csv(db: Database, exports: Bulkhead, guard: StreamGuard) -> AsyncGenerator[bytes, None]:
    """The header line, then one CSV chunk per cursor batch; memory is one batch at most.

    RFC 4180 for every value the API accepts (CRLF line ends; fields with a comma,
    quote, CR or LF quoted), and text cells starting with = + - @ tab CR (or ')
    prefixed with ' so a spreadsheet does not run them (OWASP's advice); see `neutralise`.

    At most EXPORT_MAX_CONCURRENT exports run per pod: each holds a connection and a
    CPU share for as long as its client reads, so each is bounded: EXPORT_MAX_SECONDS
    in all (`guard`), and it ends at once, truncated, when its connection dies (PostgreSQL
    ending an idle transaction, a restart): a slow reader's send would otherwise hold
    the slot and the dead connection for as long as the reader kept reading.
    """
    if not exports.try_enter():
        raise ServiceUnavailable("Too many exports are running on this instance; retry shortly.")
    started = False
    try:
        buffer = io.StringIO()
        # RFC 4180: CRLF line ends, and (QUOTE_MINIMAL) any field holding a comma, a quote,
        # CR or LF is quoted, quotes doubled; with "\n" as terminator a bare CR went unquoted.
        writer = csv.writer(buffer, lineterminator="\r\n")
        async with db.connection() as conn:

            def lost(_: object) -> None:
                guard.stop(_TRANSACTION_GONE)

            conn.add_termination_listener(lost)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    # One snapshot for the whole export. PostgreSQL's own backstop: a transaction
                    # idle for a minute (a reader stalled, or this process frozen) is ended.
                    await conn.execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")
                    started = True
                    yield (",".join(repository.COLUMNS) + "\r\n").encode()
                    async for batch in repository.stream_all(conn):
                        writer.writerows(_csv_rows(batch))
                        yield buffer.getvalue().encode()
                        buffer.seek(0)
                        buffer.truncate()
            finally:
                # A connection that died was released by the pool already (and its listeners dropped).
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.remove_termination_listener(lost)
    except _CONNECTION_GONE as error:
        if not started:
            raise  # before the response: the error handlers answer 503
        raise StreamCut(_TRANSACTION_GONE) from error  # mid-stream: cut, so it never looks complete
    finally:
        exports.leave()


_TRANSACTION_GONE = "the database ended the export's transaction"
# What a connection PostgreSQL closed under a transaction raises on its next use (or on the
# transaction's exit): the session was ended (idle timeout, pg_terminate_backend, a restart).
_CONNECTION_GONE: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.IdleInTransactionSessionTimeoutError,
    OSError,
)


# OWASP "CSV injection": a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading formula trigger (or apostrophe) gets a "'" before it.

    Apostrophes are escaped too, so the rule reverses exactly: drop one leading "'" from a
    text cell to get the stored value. Numeric columns are ints and are left alone
    (a negative number is data, not a formula; none of ours can be negative anyway).
    """
    return "'" + text if text.startswith((*_FORMULA_TRIGGERS, "'")) else text


def _csv_rows(batch: Sequence[repository.Row]) -> list[tuple[Any, ...]]:
    return [
        (
            r["id"],
            neutralise(r["sku"]),
            neutralise(r["name"]),
            neutralise(r["category"]),
            r["price_cents"],
            r["stock"],
            r["created_at"].isoformat(),
            r["updated_at"].isoformat(),
        )
        for r in batch
    ]


@router.patch("/{item_id:int}", response_model=Item, dependencies=_writes_json)
async def update_item(item_id: ItemId, body: ItemUpdate, conn: ConnectionDep, cache: CacheDep) -> Response:
    row = await repository.update(conn, item_id, body.model_dump(exclude_unset=True))
    if row is None:
        raise NotFound(f"Item {item_id} does not exist.")
    if cache is not None:
        await cache.invalidate(str(item_id))  # the UPDATE has committed (autocommit)
    return json_response(_item(row))


@router.delete("/{item_id:int}", status_code=204, dependencies=_writes)
async def delete_item(item_id: ItemId, conn: ConnectionDep, cache: CacheDep) -> Response:
    if not await repository.delete(conn, item_id):
        raise NotFound(f"Item {item_id} does not exist.")
    if cache is not None:
        await cache.invalidate(str(item_id))
    return Response(status_code=204)
