"""The gunicorn worker: uvicorn's, plus a way out that loses no request, however the worker ends.

A worker ends on SIGTERM (the pod stops, or the gunicorn master reloads on HUP and
replaces it), when it has served MAX_REQUESTS (recycled by the master), or when the
master's heartbeat timeout kills it. The stock uvicorn worker closes its connections
at once on the first two: a proxy holding keep-alive connections to the pod (nginx's
upstream pool) then sends its next request down a connection that is closing, and a
POST sent that way is lost (nginx never retries a request it started sending that is
not idempotent). On a reload or a recycle the pod stays in rotation, so that next
request is almost certain under load.

Ours first *closes connections*: every response says `Connection: close` and the
server closes the connection after it, so the proxy stops reusing them while the
worker still serves. When the pod stops it also *drains*: `/readyz` answers 503 for
SHUTDOWN_DRAIN_SECONDS, so whatever routes traffic here (kube-proxy, an ingress,
nginx) sees the pod leave before connections are refused. A reload's SIGTERM does
not drain: the master keeps the pod's socket open and its next worker already
serves (`master_holds` tells the two apart). The worker stops once no
connection is left that was promised to stay open (an idle one after a keep-alive
response, or one whose response started without `Connection: close`), or once no
request has been routed here for `_QUIET_SECONDS` (nothing can race the close), or at
the latest after half the in-flight budget. Then uvicorn's graceful shutdown stops
accepting, lets in-flight requests finish, and runs the lifespan shutdown that closes
the pools, within gunicorn's graceful timeout. The end of the drain does not reset
connections the kernel queued or that have not delivered their request yet (see
DrainingServer.shutdown); on a recycle or reload the master keeps the listening
socket, and the next worker serves whatever is queued on it.

A worker killed for the heartbeat timeout had an event loop stuck for at least half
of WORKER_TIMEOUT_SECONDS; what it had accepted cannot be answered (the edge answers
those 504 after its 30 s read timeout, or 502 when the kill resets them). Connections
still queued on the listening socket are the master's, and the next worker serves
them. In a cluster the readiness probe takes a stuck pod out of its Service, and the
liveness probe restarts it, before WORKER_TIMEOUT_SECONDS (60 s) runs out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from service.errors import problem_response
from service.middleware import PROBE_PATHS
from service.state import Lifecycle

logger = logging.getLogger("service.server")
# How long, once the drain ends, a connection that has sent nothing yet may take to send its request.
_UNREAD_CONNECTION_GRACE_SECONDS = 0.5
# No request routed here for this long while closing: nobody sends any, so closing idle connections races nothing.
_QUIET_SECONDS = 1.0


def close_connections_while_draining(app: ASGIApp, lifecycle: Lifecycle) -> ASGIApp:
    """`Connection: close` on every HTTP response that starts while the worker closes its connections."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if lifecycle.closing_connections and scope["path"] not in PROBE_PATHS:
            lifecycle.last_routed_request = time.monotonic()

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and lifecycle.closing_connections:
                # uvicorn sends it and closes the connection once the response is complete.
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


@dataclass
class _Closing:
    """Why and until when the worker closes its connections before it stops (monotonic seconds)."""

    reason: str
    not_before: float  # the end of the drain (SIGTERM); the moment closing began otherwise
    not_after: float  # stop waiting for promised connections here, whatever they do


def master_holds(master_pid: int, inodes: frozenset[int]) -> bool:
    """Whether process `master_pid` has one of the sockets `inodes` open (from /proc); False when unknown.

    gunicorn's master closes its listening sockets before it sends SIGTERM to stop the
    workers, and keeps them when it replaces a worker on a reload. Unknown (no /proc, no
    permission) counts as stopping: the full drain is the safe side.
    """
    directory = f"/proc/{master_pid}/fd"
    try:
        descriptors = os.listdir(directory)
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            target = os.readlink(f"{directory}/{descriptor}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            return True
    return False


def promised_keep_alive(connection: object) -> bool:
    """Whether the client may send another request on `connection` (a uvicorn protocol) believing it open.

    True for a connection idle after a keep-alive response, and for one whose response
    started without `Connection: close`. A connection that has not sent a request yet,
    or whose response has not started (it will say `Connection: close`), is not.
    """
    cycle = getattr(connection, "cycle", None)
    transport = getattr(connection, "transport", None)
    if cycle is None or transport is None or transport.is_closing():
        return False
    return bool(getattr(cycle, "response_started", False) and getattr(cycle, "keep_alive", False))


class DrainingServer(Server):
    """uvicorn's server, which closes its connections (and on SIGTERM drains) before it stops.

    `max_requests` (0: never) replaces uvicorn's own limit, which stops the server at
    once: past it the worker closes its connections like on SIGTERM, without draining
    (the pod stays ready; only this process is replaced), then exits for the master
    to start the next one.
    """

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        master_pid: int,
        max_requests: int = 0,
        listening_inodes: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.master_pid = master_pid
        self.max_requests = max_requests
        self.listening_inodes = listening_inodes
        self.terminating = False
        self.closing: _Closing | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.terminating:
            self.terminating = True
            if master_holds(self.master_pid, self.listening_inodes):
                # The master replaces this worker (a HUP reload) and keeps the pod's socket open:
                # the pod stays ready and its next worker already serves; only close connections.
                self.begin_closing("SIGTERM from a master that keeps listening (reload)")
            else:  # the pod stops: the master closed its listeners before it signalled the workers
                self.lifecycle.draining = True
                self.begin_closing("SIGTERM", drain_seconds=self.lifecycle.drain_seconds)
            return
        # SIGINT, SIGQUIT (gunicorn's quick shutdown) or a second SIGTERM: stop now.
        self.lifecycle.draining = True
        super().handle_exit(sig, frame)

    def begin_closing(self, reason: str, drain_seconds: float = 0.0) -> None:
        """From now on every response closes its connection; `should_exit` follows (see `may_stop`).

        Called again (SIGTERM during a recycle), the later drain wins: the pod still has to
        leave its endpoints before it stops accepting.
        """
        now = time.monotonic()
        end_of_drain = now + drain_seconds
        not_after = end_of_drain + self.lifecycle.shutdown_budget_seconds / 2
        if self.closing is not None:
            if end_of_drain <= self.closing.not_before:
                return
            reason = f"{self.closing.reason}, then {reason}"
        self.closing = _Closing(reason, end_of_drain, not_after)
        self.lifecycle.last_routed_request = now
        self.lifecycle.closing_connections = True
        logger.info(
            "closing connections before the worker stops", extra={"reason": reason, "drain_seconds": drain_seconds}
        )

    def may_stop(self, now: float) -> bool:
        """Whether no client can still send a request on a connection it believes open (or it is time anyway)."""
        closing = self.closing
        if closing is None or now < closing.not_before:
            return False
        if now >= closing.not_after:
            held = sum(promised_keep_alive(c) for c in self.server_state.connections)
            if held:
                logger.warning("stopping with keep-alive connections still open", extra={"connections": held})
            return True
        if now - self.lifecycle.last_routed_request >= _QUIET_SECONDS:
            return True
        return not any(promised_keep_alive(c) for c in self.server_state.connections)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, without resetting connections whose request is already on its way.

        Closing the listening socket resets every connection the kernel queued but the loop has
        not accepted yet (when no other process holds the socket: on a recycle or reload the
        master does), and uvicorn then closes each connection that has not sent a request yet:
        a proxy that connected a moment earlier has written its request into it, and loses it
        (nginx does not retry a POST it sent). So first let the loop accept what is queued, then
        stop listening, and give connections that have not been read yet a moment to deliver
        their request; uvicorn serves it (with `Connection: close`) before exiting.
        """
        self.lifecycle.closing_connections = True
        if self.closing is not None:  # in-flight requests get what closing left of the budget
            spent = max(time.monotonic() - self.closing.not_before, 0.0)
            self.config.timeout_graceful_shutdown = max(int(self.lifecycle.shutdown_budget_seconds - spent), 1)
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
        if self.closing is None and self.max_requests and self.server_state.total_requests >= self.max_requests:
            self.begin_closing(f"served {self.max_requests} requests (MAX_REQUESTS)")
        if self.may_stop(time.monotonic()):
            self.should_exit = True
        if counter % 10 == 0 and os.getppid() != self.master_pid:
            # The master was killed (SIGKILL, OOM): gunicorn's own workers notice this in
            # their loop, uvicorn's do not, and an orphan would keep serving forever.
            logger.warning("gunicorn master is gone; shutting down")
            self.should_exit = True
        return await super().on_tick(counter)


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), whose own 400 for a request it cannot parse is a problem.

    Such a request never reaches the app, so uvicorn answers it in plain text; every other
    error of the API is application/problem+json, and this one says the same in that shape.
    """

    def send_400_response(self, msg: str) -> None:
        response = problem_response(400, detail=msg)
        headers = [*self.server_state.default_headers, *response.raw_headers, (b"connection", b"close")]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n" + head + b"\r\n" + bytes(response.body))
        self.transport.close()


class DrainingUvicornWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn ships no types
    # uvloop + httptools (its own parse errors answered as problems); access lines come from our
    # middleware; no `server` header; X-Forwarded-For is resolved in the app (TRUSTED_PROXIES).
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "proxy_headers": False,
        "loop": "auto",
        "http": ProblemHttpToolsProtocol,
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
        # gunicorn's limit (MAX_REQUESTS plus this worker's jitter; sys.maxsize when off) is ours to
        # enforce: uvicorn's own stops the server without closing connections first.
        limit = self.max_requests if self.max_requests < sys.maxsize else 0
        self.config.limit_max_requests = None
        listening = frozenset(os.fstat(listener.fileno()).st_ino for listener in self.sockets)
        server = DrainingServer(self.config, lifecycle, self.ppid, max_requests=limit, listening_inodes=listening)
        # Gunicorn's quick shutdown (SIGINT/SIGQUIT to the master) sends workers SIGQUIT.
        # The stock worker routes it to gunicorn's own handler, which the uvicorn server
        # never notices, so the master waits out the whole graceful timeout. Stop now.
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
