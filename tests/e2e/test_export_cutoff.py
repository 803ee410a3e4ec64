"""Slow readers cannot hold a pod's exports: cut off in time, ended at once when the transaction dies.

Directly on a gunicorn pod, as an edge that does not buffer responses delivers them (the
chart's ingress streams exports: deploy/helm/catalog/values.yaml, ingress.responseBuffering):
clients with a 4 KiB receive buffer read 8 KiB at a time, slowly. Before, both export slots
and their database connections stayed held for as long as the readers kept reading, even
after PostgreSQL had ended their transactions (a third export: 503 at 75 s). Each cut-off
stream must look truncated (no final chunk), never complete.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.processes import ApiProcess

pytestmark = pytest.mark.e2e
ROWS = 100_000  # about 10 MB of CSV: far more than loopback's socket buffers hold (a few MB)


class SlowReader:
    """GET /v1/items/export.csv on a raw socket with a small receive buffer, 8 KiB per `pause` seconds."""

    def __init__(self, port: int, pause: float) -> None:
        self.port = port
        self.pause = pause
        self.received = bytearray()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        writer.write(b"GET /v1/items/export.csv HTTP/1.1\r\nHost: pod\r\n\r\n")
        await writer.drain()
        self.received += await reader.readuntil(b"\r\n\r\n")
        assert self.received.startswith(b"HTTP/1.1 200"), bytes(self.received)
        self.task = asyncio.create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(8192):
                self.received += chunk
                await asyncio.sleep(self.pause)
        finally:
            writer.close()

    async def finish_quickly(self, within: float = 30) -> None:
        """Read what is left at full speed, until the server closes the connection."""
        self.pause = 0
        assert self.task is not None
        await asyncio.wait_for(self.task, within)

    @property
    def complete(self) -> bool:
        # HTTP/1.1 chunked: a complete body ends with the zero-length chunk.
        return self.received.endswith(b"\r\n0\r\n\r\n")


async def _seed(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO items (sku, name, category, price_cents, stock)
           SELECT 'cut-' || n, 'A name long enough to fill a line ' || n, 'c', n, 1
           FROM generate_series(1, $1) AS n""",
        ROWS,
    )


async def _export_status(url: str, *, whole: bool = False) -> tuple[int, int]:
    """(status, body bytes) of one export; the body is read (at full speed) only when `whole`."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        http.stream("GET", "/v1/items/export.csv") as response,
    ):
        size = len(await response.aread()) if whole else 0
    return response.status_code, size


async def _idle_in_transaction(db: asyncpg.Connection) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'catalog-api' AND state = 'idle in transaction'"
    )
    return [row["pid"] for row in rows]


async def test_readers_too_slow_to_finish_in_time_are_cut_off_and_give_back_slot_and_connection(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    await _seed(db)
    api = start_api(EXPORT_MAX_SECONDS="4", EXPORT_MAX_CONCURRENT="2")
    readers = [SlowReader(api.port, pause=0.5) for _ in range(2)]
    for reader in readers:
        await reader.start()
    started = time.monotonic()
    assert (await _export_status(api.url))[0] == 503  # both slots held
    while (status := await _export_status(api.url))[0] == 503:
        assert time.monotonic() - started < 10, "the slow readers still hold both export slots"
        await asyncio.sleep(0.2)
    held = time.monotonic() - started
    assert status[0] == 200
    assert 3 <= held < 8, held  # cut at EXPORT_MAX_SECONDS (4 s) from the export's start
    # No transaction left open (the export just made to check the slot closes its own at once).
    for _ in range(30):
        if not await _idle_in_transaction(db):
            break
        await asyncio.sleep(0.1)
    assert await _idle_in_transaction(db) == []
    for reader in readers:
        await reader.finish_quickly()
        assert not reader.complete, "a cut-off export must not look complete"
        assert f"cut-{ROWS},".encode() not in reader.received  # it really was cut: the last row never came
    logged = [line for line in api.logs() if line.get("msg") == "stream cut off"]
    assert len(logged) == 2
    assert all("did not finish within 4 s" in line["reason"] for line in logged)
    # A reader too slow is the client's doing: 499 like a client that left, no error budget spent.
    route = {"http_route": "/v1/items/export.csv", "http_request_method": "GET"}
    async with httpx.AsyncClient() as http:
        for _ in range(20):  # observed as each export's task unwinds
            metrics = (await http.get(f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics")).text
            by_status = {
                sample.labels["http_response_status_code"]: sample.value
                for family in text_string_to_metric_families(metrics)
                for sample in family.samples
                if sample.name == "http_server_request_duration_seconds_count"
                and route.items() <= sample.labels.items()
            }
            # The two cut off, and the export that found a free slot and left after its headers.
            if by_status.get("499") == 3:
                break
            await asyncio.sleep(0.1)
    assert by_status.get("499") == 3, by_status
    assert by_status.get("500") == 0, by_status


async def test_an_export_whose_transaction_is_gone_ends_at_once(
    start_api: Callable[..., ApiProcess], db: asyncpg.Connection
) -> None:
    await _seed(db)
    api = start_api(EXPORT_MAX_CONCURRENT="1")  # EXPORT_MAX_SECONDS at its default, 300 s
    reader = SlowReader(api.port, pause=0.5)
    await reader.start()
    assert (await _export_status(api.url))[0] == 503
    await asyncio.sleep(1)  # the socket buffers are full: the export waits in `send` for its reader
    # What PostgreSQL does at idle_in_transaction_session_timeout (or a failover, or an
    # operator): it ends the session. The export's send is blocked on its slow reader.
    [pid] = await _idle_in_transaction(db)
    await db.execute("SELECT pg_terminate_backend($1)", pid)
    ended = time.monotonic()
    while (status := await _export_status(api.url))[0] == 503:
        assert time.monotonic() - ended < 3, "the export still holds its slot after its transaction ended"
        await asyncio.sleep(0.1)
    assert status[0] == 200
    assert (await _export_status(api.url, whole=True))[1] > 9_000_000, "the next export is whole"
    await reader.finish_quickly()
    assert not reader.complete, "an export whose transaction ended must not look complete"
    [line] = [line for line in api.logs() if line.get("msg") == "stream cut off"]
    assert line["reason"] == "the database ended the export's transaction"
