"""Request guards every domain's routes share (dependencies that refuse a request before its handler runs).

A domain package (service/items/, service/jobs/) imports these and nothing from
another domain, so deleting one domain leaves the others whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from fastapi import Request

from service.errors import UnsupportedMediaType


async def require_json_body(request: Request) -> None:
    """415 for a body that does not claim to be JSON (runs before FastAPI validates the body)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")


# How deep client JSON may nest (objects and arrays) before anything walks it. Python's own recursion
# limit (1000 frames, shared with the server's stack) is no bound to rely on: 3.11's parser refuses
# about 990 levels, 3.12's accepts far more, and a recursive walk of what it accepted raised
# RecursionError (a 500). Every walk of a parsed body is iterative or runs after this check.
MAX_JSON_DEPTH: Final = 32


def _children(node: object) -> Iterable[tuple[str | int, Any]] | None:
    if isinstance(node, dict):
        return node.items()
    if isinstance(node, list):
        return enumerate(node)
    return None


def too_deep(value: object, limit: int = MAX_JSON_DEPTH) -> tuple[str | int, ...] | None:
    """The location (keys, indexes) of the first object or array nested deeper than `limit`, else None.

    `value` itself is level 0: `{"a": {}}` nests 1 level. Iterative (an explicit stack), so it
    holds for any depth a parser accepted; it stops at the first container past the limit.
    """
    stack: list[tuple[object, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, location = stack.pop()
        children = _children(node)
        if children is None:
            continue
        if len(location) >= limit:
            return location
        stack.extend((child, (*location, key)) for key, child in children)
    return None
