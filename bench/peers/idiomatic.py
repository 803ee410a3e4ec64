"""FastAPI as it is usually written: response_model, Pydantic models, default serialisation."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

SELECT = "SELECT id, sku, name, category, price_cents, stock, created_at, updated_at FROM items"


class Item(BaseModel):
    id: int
    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    items: list[Item]
    next_cursor: str | None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


@app.get("/v1/items/{item_id}", response_model=Item)
async def get_item(item_id: int, pool: PoolDep) -> Item:
    row = await pool.fetchrow(f"{SELECT} WHERE id = $1", item_id)
    if row is None:
        raise HTTPException(404)
    return Item(**dict(row))


@app.get("/v1/items", response_model=ItemPage)
async def list_items(pool: PoolDep, limit: int = 20) -> ItemPage:
    rows = await pool.fetch(f"{SELECT} WHERE id > $1 ORDER BY id LIMIT $2", 0, limit + 1)
    more = len(rows) > limit
    return ItemPage(
        items=[Item(**dict(row)) for row in rows[:limit]], next_cursor=str(rows[limit - 1]["id"]) if more else None
    )
