"""When a closing worker may stop: the decision `service.server.DrainingServer.may_stop` makes every tick.

The connections here are uvicorn's per-connection state reduced to what the decision reads
(the current cycle and the transport); tests/e2e/test_worker_lifecycle.py runs the real thing
through nginx.
"""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

from uvicorn.config import Config

from service.server import DrainingServer, master_holds, promised_keep_alive
from service.state import Lifecycle


class _Connection:
    def __init__(self, cycle: object, transport: object) -> None:
        self.cycle = cycle
        self.transport = transport


def _connection(
    *, request: bool = True, started: bool = True, keep_alive: bool = True, closing: bool = False
) -> _Connection:
    cycle = SimpleNamespace(response_started=started, keep_alive=keep_alive) if request else None
    return _Connection(cycle, SimpleNamespace(is_closing=lambda: closing))


def _server(*connections: object, drain: float = 0.0) -> DrainingServer:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not served")

    server = DrainingServer(Config(app), Lifecycle(drain_seconds=drain, shutdown_budget_seconds=20), master_pid=1)
    server.server_state.connections.update(connections)  # type: ignore[arg-type]
    return server


def test_which_connections_a_client_may_still_reuse() -> None:
    assert promised_keep_alive(_connection())  # idle after a keep-alive response, or one under way
    assert not promised_keep_alive(_connection(keep_alive=False))  # its response says Connection: close
    assert not promised_keep_alive(_connection(started=False))  # its response will say it
    assert not promised_keep_alive(_connection(request=False))  # no request yet (DrainingServer.shutdown waits)
    assert not promised_keep_alive(_connection(closing=True))


def test_a_worker_that_is_not_closing_never_stops_by_itself() -> None:
    assert not _server().may_stop(time.monotonic() + 1000)


def test_closing_waits_for_promised_connections_while_requests_arrive() -> None:
    idle = _connection()
    server = _server(idle)
    server.begin_closing("test")
    now = time.monotonic()
    server.lifecycle.last_routed_request = now
    assert server.lifecycle.closing_connections
    assert not server.may_stop(now + 0.5)
    server.server_state.connections.discard(idle)  # the proxy used it (and got Connection: close)
    assert server.may_stop(now + 0.5)


def test_closing_stops_once_nothing_is_routed_here_or_at_its_limit() -> None:
    server = _server(_connection())
    server.begin_closing("test")
    start = server.lifecycle.last_routed_request
    assert not server.may_stop(start + 0.9)
    assert server.may_stop(start + 1.0)  # quiet: nobody sends requests, closing races nothing
    server.lifecycle.last_routed_request = start + 9.9
    assert not server.may_stop(start + 9.95)
    assert server.may_stop(start + 10.0)  # half the in-flight budget, whatever the connections do


def test_sigterm_drains_first_even_during_a_recycle() -> None:
    server = _server(drain=5)
    server.begin_closing("recycle")
    server.begin_closing("SIGTERM", drain_seconds=5)
    assert server.closing is not None
    assert server.closing.reason == "recycle, then SIGTERM"
    assert not server.may_stop(time.monotonic() + 4.5)
    assert server.may_stop(time.monotonic() + 6.5)


def test_whether_the_master_still_holds_the_listening_socket() -> None:
    """A reload's SIGTERM comes from a master that keeps the socket; a pod stop's, from one that closed it."""
    listener = socket.socket()
    inode = frozenset({os.fstat(listener.fileno()).st_ino})
    assert master_holds(os.getpid(), inode)
    assert not master_holds(os.getpid(), frozenset({1}))
    listener.close()
    assert not master_holds(os.getpid(), inode)
    assert not master_holds(2**22 + 7, inode)  # no such process: unknown counts as stopping
