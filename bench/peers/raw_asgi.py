"""The ceiling: the same queries and bytes as the service, with no framework at all."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from typing import Any

import asyncpg
import orjson

SELECT = "SELECT id, sku, name, category, price_cents, stock, created_at, updated_at FROM items"
KEY = os.environ.get("SECRET_KEY", "development-only-secret-key-change-me").encode()
pool: asyncpg.Pool | None = None


def _cursor(last_id: int) -> str:
    payload = struct.pack(">q", last_id)
    tag = hmac.new(KEY, b"items-cursor-v1:" + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + tag).rstrip(b"=").decode()


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global pool  # noqa: PLW0603 - a peer kept as small as possible
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                assert pool is not None
                await pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert pool is not None
    path: str = scope["path"]
    if path.startswith("/v1/items/"):
        row = await pool.fetchrow(f"{SELECT} WHERE id = $1", int(path[len("/v1/items/") :]))
        if row is None:
            await _send(send, 404, b'{"status":404}')
            return
        await _send(send, 200, orjson.dumps(dict(row.items())))
    elif path == "/v1/items":
        limit = int(scope["query_string"].decode().partition("limit=")[2] or 20)
        rows = await pool.fetch(f"{SELECT} WHERE id > $1 ORDER BY id LIMIT $2", 0, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        body = {"items": [dict(row.items()) for row in rows], "next_cursor": _cursor(rows[-1]["id"]) if more else None}
        await _send(send, 200, orjson.dumps(body))
    else:
        await _send(send, 404, b'{"status":404}')
