"""The worker's one HTTP port: probes and metrics, never reachable through the ingress.

- `/livez`: the event loop answers and the claim loop has not crashed;
- `/readyz`: PostgreSQL answers within DB_CONNECT_TIMEOUT_SECONDS; 503 once
  shutdown began;
- `/startupz`: the worker finished starting (pools open, children forked);
- `/metrics`: Prometheus exposition, OpenMetrics when the scraper asks for it.

HEAD is answered wherever GET is, with GET's status and headers and no body;
any other method is 405 with `Allow: GET, HEAD`.

A few GET endpoints with tiny answers do not need a web framework: this is a
bounded asyncio server (one request per connection, size and time limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[tuple[int, dict[str, str]]]]
_MAX_HEAD_BYTES = 16384
_READ_TIMEOUT_SECONDS = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ProbeServer:
    def __init__(self, probes: dict[str, Probe]) -> None:
        self.probes = probes

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port, limit=_MAX_HEAD_BYTES)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = await self._respond(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
        headers = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        if head.startswith(b"HEAD "):
            body = b""  # HEAD: GET's status and headers (Content-Length included), no body (RFC 9110)
        with contextlib.suppress(ConnectionError):
            writer.write(headers.encode() + body)
            await writer.drain()
        writer.close()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            accept = next(
                (line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("accept:")), ""
            )
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(REGISTRY)
        probe = self.probes.get(path)
        if probe is None:
            return 404, "text/plain", b"not found\n"
        status, body = await probe()
        return status, "application/json", orjson.dumps(body)
