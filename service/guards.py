"""Request guards every domain's routes share (dependencies that refuse a request before its handler runs).

A domain package (service/items/, service/jobs/) imports these and nothing from
another domain, so deleting one domain leaves the others whole.
"""

from __future__ import annotations

from fastapi import Request

from service.errors import UnsupportedMediaType


async def require_json_body(request: Request) -> None:
    """415 for a body that does not claim to be JSON (runs before FastAPI validates the body)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
