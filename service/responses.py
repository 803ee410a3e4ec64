"""Pre-serialised JSON responses, and streamed responses that can be cut off on purpose.

A stream cut short (its database transaction gone, its reader too slow) must never look
complete: `GuardedStreamingResponse` raises `StreamCut` instead of sending the final chunk,
and the server closes the connection without it (HTTP/1.1 chunked: no zero-length chunk;
through nginx likewise), so every client sees a truncated body, not a short CSV.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

logger = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class StreamCut(Exception):
    """A streamed response stopped before its end on purpose; the message says why.

    `by_client`: the reader was too slow (recorded as 499, like a client that left: a slow
    client must not spend the error budget); otherwise the server's side failed (500).
    """

    def __init__(self, reason: str, *, by_client: bool = False) -> None:
        super().__init__(reason)
        self.by_client = by_client


class StreamGuard:
    """When a streamed response must stop: at `deadline` (loop time), or once `stop(reason)` is called.

    `stop` may be called from a callback (asyncpg's termination listener): it only sets an event.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.reason: str | None = None
        self.by_client = False
        self._stopped = asyncio.Event()

    def stop(self, reason: str, *, by_client: bool = False) -> None:
        if self.reason is None:
            self.reason = reason
            self.by_client = by_client
            self._stopped.set()

    def check(self) -> None:
        """StreamCut if the stream must stop now."""
        if self.reason is None and asyncio.get_running_loop().time() >= self.deadline:
            self.stop(f"the reader did not finish within {self.seconds:g} s", by_client=True)
        if self.reason is not None:
            raise StreamCut(self.reason, by_client=self.by_client)

    async def send(self, send: Send, body: bytes) -> None:
        """Send one chunk, unless the guard trips first (a slow reader blocks `send` for as long as it likes)."""
        self.check()
        sending = asyncio.ensure_future(send({"type": "http.response.body", "body": body, "more_body": True}))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            timeout = self.deadline - asyncio.get_running_loop().time()
            await asyncio.wait({sending, stopped}, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
        if sending.cancelled():
            self.check()  # tripped while the chunk waited for the reader
        sending.result()  # the send's own error (the client went away), if any


class GuardedStreamingResponse(StreamingResponse):
    """A StreamingResponse whose chunks go through `guard`: past it, no final chunk is ever sent."""

    def __init__(self, content: Any, guard: StreamGuard, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.guard = guard

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sent = 0
        try:
            async for chunk in self.body_iterator:
                body = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
                await self.guard.send(send, body)
                sent += len(body)
            self.guard.check()
        except StreamCut as cut:
            logger.warning("stream cut off", extra={"reason": str(cut), "bytes_sent": sent})
            raise  # the server closes the connection without the final chunk
        finally:
            # Give back what the body holds (an export's slot and connection) now, not when the
            # garbage collector finds the abandoned generator.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with contextlib.suppress(StreamCut):  # cut while closing: nothing more is sent either way
                    await close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
