"""The gunicorn worker: uvicorn's, plus a drain period on SIGTERM.

On SIGTERM the stock uvicorn worker closes its listening socket at once.
Ours first keeps serving for SHUTDOWN_DRAIN_SECONDS with `/readyz` answering
503, so whatever routes traffic here (kube-proxy, an ingress, nginx) sees the
pod leave before connections are refused; then uvicorn's graceful shutdown
stops accepting, lets in-flight requests finish, and runs the lifespan
shutdown that closes the pools, all within gunicorn's graceful timeout.

Every response sent during the drain says `Connection: close`, and the server
closes the connection after it. A proxy holding keep-alive connections to this
pod (nginx's upstream keepalive) then stops reusing them while the pod is still
serving, instead of finding them closed under its next request when the drain
ends: nginx never retries a POST it has started sending, so that request
would be lost. For the same reason the end of the drain does not reset
connections the kernel queued or that have not delivered their request yet
(see DrainingServer.shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from service.state import Lifecycle

logger = logging.getLogger("service.server")
# How long, once the drain ends, a connection that has sent nothing yet may take to send its request.
_UNREAD_CONNECTION_GRACE_SECONDS = 0.5


def close_connections_while_draining(app: ASGIApp, lifecycle: Lifecycle) -> ASGIApp:
    """`Connection: close` on every HTTP response that starts while the pod drains."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and lifecycle.draining:
                # uvicorn sends it and closes the connection once the response is complete.
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


class DrainingServer(Server):
    def __init__(self, config: Config, lifecycle: Lifecycle, master_pid: int) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.master_pid = master_pid
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self.lifecycle.drain_seconds
        if sig == signal.SIGTERM and self.drain_deadline is None and drain > 0:
            self.drain_deadline = time.monotonic() + drain
            self.lifecycle.draining = True
            logger.info("SIGTERM: draining before shutdown", extra={"drain_seconds": drain})
            return
        self.lifecycle.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, without resetting connections whose request is already on its way.

        Closing the listening socket resets every connection the kernel queued but the loop has
        not accepted yet, and uvicorn then closes each connection that has not sent a request yet:
        a proxy that connected a moment earlier has written its request into it, and loses it
        (nginx does not retry a POST it sent). So first let the loop accept what is queued, then
        stop listening, and give connections that have not been read yet a moment to deliver
        their request; uvicorn serves it (with `Connection: close`) before exiting.
        """
        for _ in range(2):  # the accept callbacks of the next loop iteration run after us once
            await asyncio.sleep(0)
        for server in self.servers:
            server.close()
        for _ in range(int(_UNREAD_CONNECTION_GRACE_SECONDS / 0.01)):
            # `cycle` is None on a connection uvicorn has not read a request from yet.
            if all(getattr(connection, "cycle", False) is not None for connection in self.server_state.connections):
                break
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.should_exit = True
        if counter % 10 == 0 and os.getppid() != self.master_pid:
            # The master was killed (SIGKILL, OOM): gunicorn's own workers notice this in
            # their loop, uvicorn's do not, and an orphan would keep serving forever.
            logger.warning("gunicorn master is gone; shutting down")
            self.should_exit = True
        return await super().on_tick(counter)


class DrainingUvicornWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn ships no types
    # uvloop + httptools; access lines come from our middleware; no `server` header;
    # X-Forwarded-For is resolved in the app (TRUSTED_PROXIES), not by the server.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "proxy_headers": False,
        "loop": "auto",
        "http": "auto",
        "access_log": False,
        "server_header": False,
    }

    async def _serve(self) -> None:
        lifecycle = getattr(self.wsgi, "lifecycle", None)
        if not isinstance(lifecycle, Lifecycle):
            raise TypeError("DrainingUvicornWorker serves apps built by service.app.create_app()")
        self.config.app = close_connections_while_draining(self.wsgi, lifecycle)
        # In-flight requests get what is left of gunicorn's graceful timeout after the drain.
        self.config.timeout_graceful_shutdown = lifecycle.shutdown_budget_seconds
        server = DrainingServer(self.config, lifecycle, master_pid=self.ppid)
        # Gunicorn's quick shutdown (SIGINT/SIGQUIT to the master) sends workers SIGQUIT.
        # The stock worker routes it to gunicorn's own handler, which the uvicorn server
        # never notices, so the master waits out the whole graceful timeout. Stop now.
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
