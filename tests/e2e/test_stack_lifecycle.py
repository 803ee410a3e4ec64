"""`make up`'s stack through its life: a pod stopped under POSTs, repaired by `make up`, rolled by
`make restart-api`, all under steady bounded load through the real nginx; ports it did not start.

The stack runs from a RUN_DIR inside a mode-0700 directory, as a clone in root's home would: PostgreSQL
(which runs as `postgres`) and nginx's workers (`nobody`) cannot reach it, so their files live elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import psutil
import pytest
import servers
import stack as local_stack  # deploy/local/stack.py

from tests.fixtures.backends import Backends
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.e2e
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
PORT_VARIABLES = [
    "API_PORT",
    "POSTGRES_PORT",
    "REDIS_PORT",
    "PROMETHEUS_PORT",
    "WORKER_METRICS_PORT",
]


def stack_env(run_dir: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL", "API_KEYS"}}
    env.update({variable: str(servers.free_port()) for variable in PORT_VARIABLES})
    env.update(
        RUN_DIR=str(run_dir),
        API_POD_PORTS=f"{servers.free_port()},{servers.free_port()}",
        API_POD_METRICS_PORTS=f"{servers.free_port()},{servers.free_port()}",
        RATE_LIMIT_READS="1000000/minute",  # steady traffic from one address
        RATE_LIMIT_WRITES="1000000/minute",
    )
    env.update(overrides)
    return env


def run_stack(command: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STACK, command], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def state(env: dict[str, str]) -> dict[str, object]:
    return orjson.loads((Path(env["RUN_DIR"]) / "stack.json").read_bytes())  # type: ignore[no-any-return]


def pids(env: dict[str, str]) -> dict[str, int]:
    return state(env)["pids"]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    private = Path(tempfile.mkdtemp(prefix="catalog-private-clone-"))  # mode 0700, like /root
    env = stack_env(private / "run")
    up = run_stack("up", env)
    spill = ""
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        spill = str(state(env)["spill_dir"])
        yield env
    finally:
        down = run_stack("down", env, timeout=120)
        clean = run_stack("clean", env, timeout=120)
        shutil.rmtree(private, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert clean.returncode == 0, clean.stderr
        assert not Path(env["RUN_DIR"]).exists()
        assert not spill or not Path(spill).exists(), f"`make clean` left {spill}"


def key(env: dict[str, str]) -> str:
    return (Path(env["RUN_DIR"]) / "api-key").read_text().strip()


@dataclass
class Load:
    """Steady, bounded traffic through nginx: each thread sends one request every `pause` seconds at most.

    POSTs create items with unique SKUs (a POST sent twice would answer 409: a failure too).
    """

    env: dict[str, str]
    methods: tuple[str, ...] = ("GET", "POST")
    threads: int = 3
    pause: float = 0.01
    sent: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _skus: itertools.count[int] = field(default_factory=itertools.count)
    _run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __enter__(self) -> Load:
        for number in range(self.threads):
            thread = threading.Thread(target=self._run, args=(self.methods[number % len(self.methods)],))
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join()

    def _run(self, method: str) -> None:
        headers = {"Authorization": f"Bearer {key(self.env)}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{self.env['API_PORT']}", headers=headers, timeout=30) as http:
            while not self._stop.is_set():
                sku = f"load-{self._run_id}-{next(self._skus)}"
                try:
                    if method == "POST":
                        item = {"sku": sku, "name": "Load", "category": "load", "price_cents": 1, "stock": 1}
                        response = http.post("/v1/items", json=item)
                        ok = response.status_code == 201
                    else:
                        response = http.get("/v1/items", params={"limit": 5})
                        ok = response.status_code == 200
                    outcome = "" if ok else f"{method} {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    outcome = f"{method} {type(error).__name__}: {error}"
                with self._lock:
                    self.sent[method] = self.sent.get(method, 0) + 1
                    if outcome:
                        self.failures.append(outcome)
                    elif method == "POST":
                        self.created.append(sku)
                time.sleep(self.pause)

    def report(self, what: str) -> str:
        return f"{what}: sent {self.sent}, failed {len(self.failures)}"


def test_a_private_clone_keeps_postgres_data_where_postgres_can_reach_it(stack: dict[str, str]) -> None:
    assert httpx.get(f"http://127.0.0.1:{stack['API_PORT']}/readyz").json()["status"] == "ok"
    spill = str(state(stack)["spill_dir"])
    if os.geteuid() != 0:
        assert spill == ""  # PostgreSQL runs as this user: RUN_DIR is fine
        return
    assert spill.startswith("/var/tmp/catalog-")
    assert not Path(spill).is_relative_to(Path(stack["RUN_DIR"]).parent)
    postgres_dir = Path(spill) / "postgres"
    assert (postgres_dir / "data" / "PG_VERSION").exists()
    assert postgres_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert servers.reachable_by("postgres", postgres_dir)
    assert servers.reachable_by("nobody", Path(spill) / "nginx-tmp" / "body")
    # A request body nginx buffers to disk (over 16 KiB) goes through its temp directory as `nobody`.
    big = {"sku": "big-1", "name": "x" * 60_000, "category": "c", "price_cents": 1, "stock": 1}
    created = httpx.post(
        f"http://127.0.0.1:{stack['API_PORT']}/v1/items", json=big, headers={"Authorization": f"Bearer {key(stack)}"}
    )
    assert created.status_code in {201, 422}, created.text  # the app answered: nginx could buffer the body


def _access_log(env: dict[str, str]) -> list[dict[str, object]]:
    path = Path(env["RUN_DIR"]) / "nginx" / "access.log"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _served_after(env: dict[str, str], pod: str, after: float) -> set[str]:
    """Request ids of the requests `pod` finished after `after` (epoch seconds), from its access log."""
    served = set()
    for line in (Path(env["RUN_DIR"]) / f"{pod}.log").read_bytes().splitlines():
        entry = orjson.loads(line) if line.startswith(b"{") else {}
        if entry.get("logger") == "service.access":
            finished = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
            if finished > after:
                served.add(entry["request_id"])
    return served


def test_posts_through_nginx_while_a_pod_stops_lose_none(stack: dict[str, str]) -> None:
    """SIGTERM one pod (nginx is not told) under POSTs: it drains with `Connection: close`, nothing is lost."""
    victim = pids(stack)["api-1"]
    with Load(stack, methods=("POST",), threads=4) as load:
        time.sleep(1)
        os.kill(victim, signal.SIGTERM)
        signalled = time.time()
        while servers.process_alive(victim):
            time.sleep(0.05)
        time.sleep(1)
    print(load.report("POSTs while api-1 stops"))
    assert load.sent["POST"] > 100
    assert load.failures == []
    assert asyncio.run(_items_with_skus(stack, load.created)) == len(load.created)
    # What nginx heard from api-1 on the requests it served while draining (100 ms for the signal to land).
    during_drain = _served_after(stack, "api-1", signalled + 0.1)
    headers = [line["upstream_connection"] for line in _access_log(stack) if line["request_id"] in during_drain]
    print(f"Connection header on api-1's responses during its drain: { {h: headers.count(h) for h in set(headers)} }")
    assert len(headers) > 10
    assert set(headers) == {"close"}


async def _items_with_skus(env: dict[str, str], skus: list[str]) -> int:
    conn = await asyncpg.connect(str(state(env)["database_url"]))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM items WHERE sku = ANY($1)", skus))
    finally:
        await conn.close()


def test_up_again_restarts_a_dead_pod_and_the_worker_while_the_rest_serves(stack: dict[str, str]) -> None:
    before = pids(stack)
    for name in ("api-1", "worker"):
        if servers.process_alive(before[name]):
            os.killpg(before[name], signal.SIGKILL)  # the process and what it started
    time.sleep(0.5)
    with Load(stack) as load:
        time.sleep(1)
        repaired = run_stack("up", stack)
        time.sleep(1)
    print(load.report("traffic through nginx while `make up` repaired the stack"))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "starting: api-1, worker" in repaired.stdout
    after = pids(stack)
    assert after["api-2"] == before["api-2"]
    assert after["nginx"] == before["nginx"]
    assert after["prometheus"] == before["prometheus"]
    assert {after["api-1"], after["worker"]}.isdisjoint({before["api-1"], before["worker"]})
    assert servers.process_alive(after["api-1"])
    assert httpx.get(f"http://127.0.0.1:{stack['WORKER_METRICS_PORT']}/readyz").status_code == 200
    assert load.failures == []
    assert asyncio.run(_items_with_skus(stack, load.created)) == len(load.created)
    again = run_stack("up", stack)
    assert again.returncode == 0, again.stderr
    assert "starting: nothing, everything runs" in again.stdout
    assert pids(stack) == after


def _nginx_workers(env: dict[str, str]) -> set[int]:
    return {child.pid for child in psutil.Process(pids(env)["nginx"]).children()}


def test_a_pod_out_of_rotation_gets_no_request_and_up_puts_a_ready_one_back(stack: dict[str, str]) -> None:
    loaded = local_stack.Stack.load(Path(stack["RUN_DIR"]))
    assert loaded is not None
    marker = local_stack.rotation_marker(loaded, 1)
    pod_1, pod_2 = (f"127.0.0.1:{port}" for port in stack["API_POD_PORTS"].split(","))
    workers = _nginx_workers(stack)

    def routed_to(tag: str) -> set[object]:
        ids = [f"{tag}-{uuid.uuid4().hex[:8]}-{n}" for n in range(10)]
        with httpx.Client(base_url=f"http://127.0.0.1:{stack['API_PORT']}") as http:
            for request_id in ids:
                response = http.get("/v1/items", params={"limit": 1}, headers={"X-Request-ID": request_id})
                assert response.status_code == 200, response.text
        return {line["upstream_addr"] for line in _access_log(stack) if line["request_id"] in ids}

    try:
        marker.touch()
        assert routed_to("out") == {pod_2}  # from the next request on, without a reload
        marker.unlink()
        assert routed_to("in") == {pod_1, pod_2}
        marker.touch()  # as an interrupted `make restart-api` leaves it
        repaired = run_stack("up", stack)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert "api-1 is back in nginx's rotation" in repaired.stdout
        assert not marker.exists()
        assert routed_to("back") == {pod_1, pod_2}
    finally:
        marker.unlink(missing_ok=True)
    assert _nginx_workers(stack) == workers  # nginx was never reloaded


def test_restart_api_refuses_an_nginx_started_without_rotation_markers(stack: dict[str, str]) -> None:
    config = Path(stack["RUN_DIR"]) / "nginx" / "nginx.conf"
    current = config.read_text()
    before = pids(stack)
    try:
        config.write_text(current.replace("nginx-rotation", "elsewhere"))  # as an older `make up` wrote it
        refused = run_stack("restart-api", stack)
    finally:
        config.write_text(current)
    assert refused.returncode != 0
    assert "`make down && make up`" in refused.stderr
    assert pids(stack) == before  # no pod was touched


def test_restart_api_rolls_the_pods_one_at_a_time_without_a_failed_request(stack: dict[str, str]) -> None:
    before = pids(stack)
    workers = _nginx_workers(stack)
    with Load(stack, threads=8, pause=0.0) as load:  # busy keep-alive connections: a reload would close some
        time.sleep(1)
        rolled = run_stack("restart-api", stack)
        time.sleep(1)
    print(load.report("traffic through nginx during `make restart-api`"))
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    after = pids(stack)
    assert after["api-1"] != before["api-1"]
    assert after["api-2"] != before["api-2"]
    assert not servers.process_alive(before["api-1"])
    assert not servers.process_alive(before["api-2"])
    # nginx was not reloaded: a reload closes clients' idle keep-alive connections, one maybe under a request.
    assert _nginx_workers(stack) == workers
    assert load.sent["GET"] > 100
    assert load.sent["POST"] > 100
    assert load.failures == []
    assert asyncio.run(_items_with_skus(stack, load.created)) == len(load.created)
    # Both replacements serve, and each got requests once back in rotation.
    for port in stack["API_POD_PORTS"].split(","):
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200


@pytest.mark.parametrize("variable", ["POSTGRES_PORT", "REDIS_PORT"])
def test_up_never_writes_to_a_server_it_did_not_start(backends: Backends, variable: str, tmp_path: Path) -> None:
    if backends.postgres is None or backends.redis is None:
        pytest.skip("the session's servers come from DATABASE_URL / REDIS_URL: not ours to offer as a trap")
    taken = backends.postgres.port if variable == "POSTGRES_PORT" else backends.redis.port
    run_dir = Path(tempfile.mkdtemp(prefix="catalog-taken-port-"))
    try:
        env = stack_env(run_dir, **{variable: str(taken)})
        refused = run_stack("up", env, timeout=60)
        assert refused.returncode == 1
        assert f"port {taken} ({variable}) is taken by a server `make up` did not start" in refused.stderr
        assert ("DATABASE_URL" if variable == "POSTGRES_PORT" else "REDIS_URL") in refused.stderr
        assert not (run_dir / "stack.json").exists()  # nothing was started
        assert not servers.spill_path(run_dir).exists()  # nor any directory made for it
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    has_catalog = subprocess.run(
        [
            str(servers.postgres_bindir() / "psql"),
            backends.postgres.url(),
            "-Atc",
            "SELECT 1 FROM pg_database WHERE datname = 'catalog'",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert has_catalog.stdout.strip() == ""  # no database was created on it


def test_up_names_the_variable_of_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        run_dir = Path(tempfile.mkdtemp(prefix="catalog-taken-port-"))
        try:
            refused = run_stack("up", stack_env(run_dir, PROMETHEUS_PORT=str(port)), timeout=60)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    assert refused.returncode == 1
    assert not servers.spill_path(run_dir).exists()
    assert f"port {port} (PROMETHEUS_PORT, for prometheus) is already in use: set PROMETHEUS_PORT" in refused.stderr
