"""The metrics port: served at once, or taken over as soon as the worker before this one lets go of it."""

from __future__ import annotations

import errno
import socket
import time

import httpx
import pytest
import servers  # deploy/local (tests/fixtures/__init__.py puts it on sys.path)

from service.exposition import serve_metrics


def _scrape(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code
    except httpx.TransportError:
        return None


def test_a_free_port_is_served_at_once_and_let_go_at_shutdown() -> None:
    port = servers.free_port()
    stop = serve_metrics(port, "127.0.0.1")
    assert _scrape(port) == 200
    stop()
    assert _scrape(port) is None


def test_a_busy_port_is_taken_over_once_its_holder_lets_go() -> None:
    port = servers.free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    stop = serve_metrics(port, "127.0.0.1")  # the previous worker, still draining, holds it: no error
    try:
        time.sleep(0.5)
        holder.close()
        deadline = time.monotonic() + 5
        while _scrape(port) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _scrape(port) == 200
    finally:
        stop()


def test_any_other_bind_error_is_raised() -> None:
    with pytest.raises(OSError, match="assign requested address") as raised:
        serve_metrics(servers.free_port(), "192.0.2.1")  # TEST-NET-1: no interface has it
    assert raised.value.errno == errno.EADDRNOTAVAIL
