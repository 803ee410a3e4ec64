"""FastAPI's floor: a route that does no I/O at all."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/v1/items/{item_id}")
async def get_item(item_id: int) -> dict[str, bool]:
    return {"ok": True}
