"""Every way a pod's worker ends loses no request that reached it, through nginx's keep-alive pool.

A worker ends by SIGTERM (the pod stops; tests/e2e/test_server.py and the stack's rolling
restart), by recycling after MAX_REQUESTS, by the gunicorn master's HUP (reload: a new worker
starts, the old one gets SIGTERM) or by the master's heartbeat timeout. In the first three the
pod stays in rotation, or may: nginx keeps sending requests on its pooled connections to the
old worker, and a POST sent on one the worker closes is lost (nginx never retries a POST).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import httpx
import psutil
import pytest

from tests.fixtures.backends import Backends
from tests.fixtures.edge import Edge, mixed_load
from tests.fixtures.keys import WRITER
from tests.fixtures.paths import ROOT
from tests.fixtures.processes import ApiProcess, api_env

pytestmark = pytest.mark.e2e

UNLIMITED = {"RATE_LIMIT_READS": "1000000/minute", "RATE_LIMIT_WRITES": "1000000/minute"}
UPSTREAM_FAULTS = ("reset by peer", "prematurely closed", "temporarily disabled", "no live upstreams")


@contextmanager
def worker_pids(api: ApiProcess) -> Iterator[list[int]]:
    """The pids of every worker the pod's master ran while the block ran, in order of first sight."""
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        master = psutil.Process(api.pid)
        while not stop.is_set():
            try:
                children = master.children()
            except psutil.NoSuchProcess:
                return
            seen.extend(child.pid for child in children if child.pid not in seen)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


def test_posts_through_nginx_across_ten_recycles_lose_none(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    api = start_api(MAX_REQUESTS="150", MAX_REQUESTS_JITTER="0", **UNLIMITED)
    edge = start_edge([api])
    with worker_pids(api) as pids:
        result = mixed_load(
            edge.url,
            {"POST": 4, "GET": 2},
            seconds=150,
            max_requests=4000,
            headers=WRITER,
            until=lambda: len(pids) > 11,  # the first worker and 10 replacements, and the 11th under way
        )
    recycles = len(pids) - 1
    print(f"{recycles} recycles: {result.summary()}; nginx error log: {edge.error_lines(*UPSTREAM_FAULTS)[:3]}")
    assert recycles >= 10, result.summary()
    assert result.failures == []
    assert edge.error_lines(*UPSTREAM_FAULTS) == []


def test_posts_through_nginx_across_hup_reloads_lose_none(
    start_api: Callable[..., ApiProcess], start_edge: Callable[[Sequence[ApiProcess]], Edge]
) -> None:
    api = start_api(SHUTDOWN_DRAIN_SECONDS="2", **UNLIMITED)
    edge = start_edge([api])
    reloads = 3
    with worker_pids(api) as pids:

        def reload_now_and_then() -> None:
            for _ in range(reloads):
                time.sleep(2.5)
                api.signal(signal.SIGHUP)

        readiness: list[int] = []

        def probe_readiness() -> None:  # what the kubelet would see: the pod stays ready through reloads
            with httpx.Client(base_url=api.url, timeout=5) as http:
                while reloader.is_alive():
                    readiness.append(http.get("/readyz").status_code)
                    time.sleep(0.05)

        reloader = threading.Thread(target=reload_now_and_then)
        prober = threading.Thread(target=probe_readiness)
        reloader.start()
        prober.start()
        tail_from: list[float] = []

        def reloads_done_and_served_a_while() -> bool:
            # The load outlasts the last HUP: until its new worker is seen and has served for 1.5 s.
            # (A quiet machine once sent a fixed request count before the last HUP, so the block
            # ended before the master forked the last worker.)
            if reloader.is_alive() or len(pids) <= reloads:
                return False
            tail_from.append(time.monotonic())
            return time.monotonic() - tail_from[0] > 1.5

        result = mixed_load(
            edge.url,
            {"POST": 4, "GET": 2},
            seconds=reloads * 2.5 + 20,
            max_requests=40_000,
            headers=WRITER,
            until=reloads_done_and_served_a_while,
        )
        reloader.join()
        prober.join()
    faults = edge.error_lines(*UPSTREAM_FAULTS)
    print(f"{reloads} HUPs, {len(pids)} workers: {result.summary()}; error log: {faults[:3]}")
    assert api.process is not None
    assert api.process.poll() is None, "the master exited"
    assert len(pids) == reloads + 1, pids
    assert result.failures == []
    assert faults == []
    assert len(readiness) > 10
    assert set(readiness) == {200}
    reasons = [line["reason"] for line in api.logs() if line["msg"] == "closing connections before the worker stops"]
    assert reasons == ["SIGTERM from a master that keeps listening (reload)"] * reloads
    # Each new worker started while the old one still held the metrics port, and took it over.
    served = api.logs(until=lambda line: line["msg"] == "metrics port served")
    assert sum(line["msg"] == "metrics port served" for line in served) >= 1
    metrics = httpx.get(f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "http_server_request_duration_seconds" in metrics.text


def test_a_second_worker_per_pod_is_refused_at_startup_with_one_line(backends: Backends) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"],
        cwd=ROOT,
        env=api_env(backends, WEB_CONCURRENCY="2"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: WEB_CONCURRENCY is invalid: must be 1: one worker process per pod")


def test_requests_queued_behind_a_worker_killed_for_timeout_are_served_by_its_replacement(
    start_api: Callable[..., ApiProcess],
) -> None:
    """A stuck worker (stopped here) is killed by the master's heartbeat timeout; its queue is not lost.

    What the stuck worker had accepted cannot be answered; the connections still in the listen
    queue belong to the master's socket and the next worker serves them. In a cluster the
    liveness probe (3 x 10 s) restarts a stuck pod before WORKER_TIMEOUT_SECONDS (60 s) would.
    """
    api = start_api(WORKER_TIMEOUT_SECONDS="2", **UNLIMITED)
    [stuck] = psutil.Process(api.pid).children()
    stuck.suspend()
    outcomes: list[int | str] = []

    def post(n: int) -> None:
        item = {"sku": f"queued-{n}", "name": "Queued", "category": "c", "price_cents": 1, "stock": 1}
        try:
            outcomes.append(httpx.post(f"{api.url}/v1/items", json=item, headers=WRITER, timeout=60).status_code)
        except httpx.TransportError as error:
            outcomes.append(repr(error))

    posts = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for thread in posts:
        thread.start()
    for thread in posts:
        thread.join()
    assert outcomes == [201] * 8
    assert not stuck.is_running()
    assert api.process is not None
    assert api.process.poll() is None, "the master exited"
    assert any(line["msg"].startswith("WORKER TIMEOUT") for line in api.logs())
