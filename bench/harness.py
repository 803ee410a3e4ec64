"""Shared benchmark plumbing: throwaway backends, pinned server processes, wrk runs.

This machine is shared and noisy, so benchmarks compare peers side by side in
one run and report ratios; absolute numbers are for context only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "deploy" / "local"))
sys.path.insert(1, str(ROOT))  # the service package, for benchmarks run as scripts
import servers as servers  # noqa: E402, PLC0414  (re-exported for the benchmarks)

SERVER_CPU = "1"  # the server under test gets one core to itself...
LOAD_CPU = "0"  # ...and the load generator the other (PostgreSQL and Redis float)


@dataclass
class Backends:
    database_url: str
    redis_url: str

    def server_env(self, port: int) -> dict[str, str]:
        """What any server under test needs to reach these backends and listen on `port`."""
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "HOST": "127.0.0.1", "PORT": str(port)}


@contextmanager
def throwaway_backends() -> Iterator[Backends]:
    workdir = servers.server_workdir("catalog-bench-")  # the postgres user must reach its directory inside
    postgres = servers.Postgres(workdir / "postgres", servers.free_port(), settings=("max_connections=300",))
    redis = servers.Redis(workdir / "redis", servers.free_port())
    try:
        postgres.start()
        postgres.create_database("bench")
        redis.start()
        backends = Backends(postgres.url("bench"), redis.url())
        subprocess.run(
            [sys.executable, "-m", "service.migrate"],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": backends.database_url,
                "REDIS_URL": backends.redis_url,
                "ENVIRONMENT": "development",
            },
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield backends
    finally:
        redis.stop()
        postgres.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


async def _seed(database_url: str, rows: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE items RESTART IDENTITY")
        await conn.execute(
            """INSERT INTO items (sku, name, category, price_cents, stock)
               SELECT 'sku-' || n, 'Benchmark item number ' || n, 'category-' || (n % 17), n * 7, n % 1000
               FROM generate_series(1, $1) AS n""",
            rows,
        )
        await conn.execute("VACUUM ANALYZE items")
    finally:
        await conn.close()


def seed(database_url: str, rows: int) -> None:
    asyncio.run(_seed(database_url, rows))


@contextmanager
def server(
    command: list[str],
    env: dict[str, str],
    port: int,
    *,
    pin: bool = True,
    headers: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server (pinned to SERVER_CPU), wait until it answers (sent `headers`), stop it afterwards.

    `cwd`: the checkout whose `service` package it runs (another commit's, to compare before and after).
    """
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
    prefix = ["taskset", "-c", SERVER_CPU] if pin else []
    process = subprocess.Popen(
        [*prefix, *command],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/items/1", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        try:
            yield process
        except Exception:
            print(f"server log (last 3000 characters):\n{Path(log.name).read_text()[-3000:]}", file=sys.stderr)
            raise
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already (a failed start)
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        os.unlink(log.name)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str = ""  # wrk's own lines about them
    # CPU seconds (user + system) the server's worker used during the run, when `measure` was given it:
    # what a request costs the server whatever share of its core the shared machine left it.
    cpu_seconds: float | None = None
    requests: int = 0  # answered in the measured run (wrk's count)

    @property
    def cpu_us_per_request(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds * 1e6 / max(self.requests, 1)


def wrk(
    url: str, *, seconds: int, connections: int, script: Path | None = None, env: dict[str, str] | None = None
) -> WrkResult:
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    result = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=seconds + 30,
    )
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    percentiles = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad[1]) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    if "99" not in percentiles:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    detail = "; ".join(line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line)
    answered = re.search(r"^\s*(\d+) requests in ", out, re.M)
    return WrkResult(
        rps, percentiles["50"], percentiles["99"], errors, detail, requests=int(answered[1]) if answered else 0
    )


def measure(
    label: str,
    url: str,
    *,
    seconds: int,
    connections: int,
    script: Path | None = None,
    env: dict[str, str] | None = None,
    warmup_seconds: int = 2,
    tolerated_error_share: float = 0.0,
    cpu_of: psutil.Process | None = None,
) -> WrkResult:
    """A warm-up run (discarded; none if `warmup_seconds` is 0), then the measured one; with `cpu_of`, that
    process's CPU time during it.

    RuntimeError naming `label` when more than `tolerated_error_share` of the
    requests failed (a timeout, a non-2xx answer); fewer are printed and kept in
    the result's `errors` for the report to show.
    """
    if warmup_seconds:
        wrk(url, seconds=warmup_seconds, connections=connections, script=script, env=env)
    cpu = sum(cpu_of.cpu_times()[:2]) if cpu_of is not None else 0.0
    result = wrk(url, seconds=seconds, connections=connections, script=script, env=env)
    if cpu_of is not None:
        result.cpu_seconds = sum(cpu_of.cpu_times()[:2]) - cpu
    if result.errors > tolerated_error_share * result.requests_per_second * seconds:
        raise RuntimeError(f"{label}: {result.errors} errors or non-2xx responses ({result.error_detail})")
    if result.errors:
        print(f"{label}: {result.errors} errors kept in the results ({result.error_detail})", flush=True)
    return result


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt-get install wrk util-linux)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmarks pin the server and the load generator to different cores: need 2")


@dataclass
class Profile:
    collapsed: str = ""  # py-spy's stacks, "frame;frame;... samples" per line: filled in when the block ends


@contextmanager
def py_spy(pid: int, seconds: int, rate: int = 250, *, gil: bool = False) -> Iterator[Profile]:
    """Sample process `pid` with py-spy for `seconds` while the block runs (the block should run as long).

    The block's work is what gets sampled: start the load inside it. `--nonblocking`
    leaves the process running while it is read (a few torn stacks, no added latency).
    `gil`: only samples of the thread holding the GIL (CPU work, not threads waiting).
    """
    with tempfile.NamedTemporaryFile(prefix="bench-py-spy-", suffix=".txt") as raw:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                str(rate),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                raw.name,
                "--full-filenames",
                *(["--gil"] if gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        profile = Profile()
        try:
            yield profile
        finally:
            spy.wait(timeout=seconds + 30)
        profile.collapsed = Path(raw.name).read_text()


_PACKAGES = ("service/", "fastapi/", "starlette/", "asyncpg/", "redis/", "logging/", "uvicorn/", "opentelemetry/")


def top_frames(
    profile: Profile, count: int = 15, *, request_us: float | None = None, focus: tuple[str, ...] = _PACKAGES
) -> list[str]:
    """Markdown tables: the `count` functions with the most self time, then the inclusive time of those in `focus`.

    Shares are of all samples taken. With `request_us` (the CPU microseconds one request
    costs: 1e6 / req/s of a server saturating its one core, sampled with `gil=True`), each
    share is also given as microseconds per request, comparable across servers.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in profile.collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [_short(frame) for frame in stack.split(";")]
        total += int(samples)
        own[frames[-1]] += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    if not total:
        return ["(no samples: py-spy needs ptrace permission)"]

    def row(frame: str, n: int) -> str:
        share = n / total
        return f"| {100 * share:.1f} |" + (f" {share * request_us:.1f} |" if request_us else "") + f" `{frame}` |"

    head = "| {} % |" + (" us/request |" if request_us else "") + " function |"
    rule = "|---:|" + ("---:|" if request_us else "") + "---|"
    table = [head.format("self"), rule, *(row(frame, n) for frame, n in own.most_common(count))]
    table += ["", head.format("inclusive"), rule]
    table += [row(frame, n) for frame, n in inclusive.most_common() if frame.startswith(focus)][: count * 2]
    return table


def _short(frame: str) -> str:
    """`name (/long/path/site-packages/pkg/mod.py:12)` -> `pkg/mod.py name`: the package kept, the line dropped.

    Without the line, a function's samples add up wherever in it they fell.
    """
    name, _, location = frame.partition(" (")
    location = location.rstrip(")").rpartition(":")[0] or location
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3.11/", "/service/"):
        if marker in location:  # ("/service/": another checkout's, a --baseline server's)
            location = location.split(marker, 1)[1]
            location = f"service/{location}" if marker == "/service/" else location
            break
    return f"{location} {name}"
