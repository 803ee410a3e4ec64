"""Logging off the event loop: context captured where the record is made, lines written by a thread, none waited for."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import REGISTRY

from service import logging as logging_module
from service.logging import (
    ACCESS_LOGGER,
    JsonFormatter,
    log_access,
    request_id_var,
    start_background_logging,
    stop_background_logging,
)
from service.middleware import new_request_id


def access_lines(outcome: str) -> float:
    return REGISTRY.get_sample_value("access_log_lines_total", {"outcome": outcome}) or 0.0


class GatedHandler(logging.Handler):
    """Writes JSON lines to a buffer, noting the writing thread; waits for `gate` before each."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.gate = threading.Event()
        self.gate.set()
        self.out = io.StringIO()
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.out.write(self.format(record) + "\n")


@pytest.fixture
def access_log() -> Iterator[tuple[logging.Logger, GatedHandler]]:
    log = logging.getLogger(ACCESS_LOGGER)
    handler = GatedHandler()
    saved = (log.handlers, log.propagate, log.level, log.disabled)
    log.handlers, log.propagate, log.disabled = [handler], False, False
    log.setLevel(logging.INFO)  # setLevel, not .level: it clears the enabled-for cache
    try:
        yield log, handler
    finally:
        handler.gate.set()
        stop_background_logging()
        log.handlers, log.propagate, _, log.disabled = saved
        log.setLevel(saved[2])


def test_lines_are_written_by_a_thread_with_the_context_of_the_request(
    access_log: tuple[logging.Logger, GatedHandler],
) -> None:
    log, handler = access_log
    start_background_logging(loggers=[log])
    written = access_lines("written")
    for n in range(50):
        token = request_id_var.set(f"req-{n}")
        log.info("request", extra={"status": 200})
        request_id_var.reset(token)  # gone before the thread formats the line
    stop_background_logging()  # writes everything queued
    lines = [orjson.loads(line) for line in handler.out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == [f"req-{n}" for n in range(50)]
    assert {line["status"] for line in lines} == {200}
    assert threading.current_thread().name not in handler.threads
    assert access_lines("written") - written == 50
    assert handler in log.handlers  # put back


def test_a_full_queue_drops_and_counts_instead_of_waiting(access_log: tuple[logging.Logger, GatedHandler]) -> None:
    log, handler = access_log
    handler.gate.clear()  # the writer is stuck (a pipe nobody reads)
    start_background_logging(queue_size=2, loggers=[log])
    dropped, written = access_lines("dropped"), access_lines("written")
    for _ in range(10):
        log.info("request")  # returns at once even though nothing can be written
    lost = access_lines("dropped") - dropped
    assert 7 <= lost <= 8  # the queue holds 2, the stuck writer 1 (or not yet)
    handler.gate.set()
    stop_background_logging()
    assert access_lines("written") - written == 10 - lost
    assert len(handler.out.getvalue().splitlines()) == 10 - lost


def test_generated_request_ids_are_32_hex_digits_and_differ_across_forked_workers() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a gunicorn worker is a fork of the master: it must not repeat the parent's sequence
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_request_id()


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_stream_gets_its_lines_in_order_in_batches_not_one_write_each() -> None:
    log = logging.getLogger("test.batched")
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.INFO)
    start_background_logging(loggers=[log])
    try:
        for n in range(500):
            log.info("line", extra={"n": n})
    finally:
        stop_background_logging()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(500))
    assert stream.writes < 50, f"{stream.writes} writes for 500 lines"


def test_an_access_line_built_without_a_log_record_is_the_line_the_logger_would_write() -> None:
    """log_access skips the logging machinery only when our JSON stream is the one place the line can go."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = (root.handlers, root.level, access.handlers, access.propagate, access.level, access.disabled)
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.handlers, access.handlers, access.propagate, access.disabled = [handler], [], True, False
    root.setLevel(logging.INFO)
    access.setLevel(logging.NOTSET)
    fields = {"method": "GET", "path": "/v1/items/1", "status": 200, "duration_ms": 0.25, "client": "10.0.0.1"}
    try:
        start_background_logging(loggers=[root, access])
        assert logging_module._access_shortcut is not None
        token = request_id_var.set("req-1")
        log_access({**fields, "principal": None})
        access.info("request", extra={**fields, "principal": None})  # the general way, same fields
        request_id_var.reset(token)
        stop_background_logging()
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        shortcut, general = (line for line in lines if line["logger"] == ACCESS_LOGGER)
        assert shortcut.pop("ts")[:19] == general.pop("ts")[:19]
        assert list(shortcut.items()) == list(general.items())  # same keys, same order, same values

        handler.addFilter(lambda record: True)  # a filter must see every record: no shortcut
        start_background_logging(loggers=[root, access])
        assert logging_module._access_shortcut is None
        log_access({**fields, "principal": "reader"})
        stop_background_logging()
        last = [orjson.loads(line) for line in stream.getvalue().splitlines()][-1]
        assert (last["logger"], last["principal"]) == (ACCESS_LOGGER, "reader")
    finally:
        stop_background_logging()
        root.handlers, _, access.handlers, access.propagate, _, access.disabled = saved
        root.setLevel(saved[1])
        access.setLevel(saved[4])
