"""Per-request profiles in development: `X-Profile: 1` stores a pyinstrument profile of that one request.

With REQUEST_PROFILING=true (refused when ENVIRONMENT=production: a profile
shows the code's internals and costs the request its speed), a request that
carries `X-Profile: 1` runs under pyinstrument and its profile is written as
an HTML page to REQUEST_PROFILING_DIR; the response says where in
`X-Profile-Report`. Requests without the header pay nothing but one header
lookup.

Why pyinstrument rather than cProfile: the request's work is spread over
event-loop callbacks, and cProfile charges whatever runs in the loop meanwhile
(other requests included) to whichever frame happens to be on the stack.
pyinstrument's async mode attributes the time spent awaiting to the `await`
that waited, so the page reads as this request's call tree. It is a
development dependency (not in the production image); the middleware is only
installed when the setting is on.

The profile covers every layer inside this middleware: it sits just inside
the request context, so the request id is known and names the file.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import request_id_var

HEADER = b"x-profile"
REPORT_HEADER = b"x-profile-report"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class RequestProfilerMiddleware:
    def __init__(self, app: ASGIApp, directory: Path) -> None:
        from pyinstrument import Profiler  # noqa: PLC0415  (development only; imported once, at startup)

        self.app = app
        self.directory = directory
        self._profiler_class: Any = Profiler
        directory.mkdir(parents=True, exist_ok=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (HEADER, b"1") not in scope["headers"]:
            await self.app(scope, receive, send)
            return
        slug = _UNSAFE.sub("_", scope["path"]).strip("_")[:60] or "root"
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{scope['method']}-{slug}-{request_id_var.get() or 'no-id'}.html"
        report = self.directory / name

        async def send_with_report(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPORT_HEADER, str(report).encode())]}
            await send(message)

        profiler = self._profiler_class(interval=0.0005, async_mode="enabled")
        profiler.start()
        try:
            await self.app(scope, receive, send_with_report)
        finally:
            profiler.stop()
            # Written on the event loop, after the response: development only, a few ms per profiled request.
            report.write_text(profiler.output_html(), encoding="utf-8")
