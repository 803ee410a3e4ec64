"""Real server processes: gunicorn with our worker, started the way a pod starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import pytest
import servers  # deploy/local, put on sys.path by tests/conftest.py

from tests.conftest import ROOT, TEST_API_KEYS, TEST_SECRET_KEY, Backends

pytestmark = pytest.mark.e2e


class ServiceProcess:
    """One of our processes in a subprocess of its own session, logging JSON lines to a file."""

    command: tuple[str, ...] = ()
    name = "process"

    def __init__(self, env: dict[str, str], logfile: Path, url: str) -> None:
        self.env = env
        self.logfile = logfile
        self.url = url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.command],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30) -> Self:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logfile.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.logfile.read_text()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def logs(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.logfile.read_bytes().splitlines() if line.startswith(b"{")]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # quick shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the process and its children
                self.process.wait()


class ApiProcess(ServiceProcess):
    """`gunicorn -c python:service.gunicorn_conf`, started the way a pod starts it."""

    command = ("-m", "gunicorn", "-c", "python:service.gunicorn_conf")
    name = "gunicorn"

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        super().__init__(env, logfile, f"http://127.0.0.1:{env['PORT']}")
        self.port = int(env["PORT"])


def api_env(backends: Backends, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENVIRONMENT": "development",
        "DATABASE_URL": backends.database_url,
        "REDIS_URL": backends.redis_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(servers.free_port()),
        "DB_POOL_MAX_SIZE": "5",
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "METRICS_PORT": str(servers.free_port()),
        "API_KEYS": orjson.dumps(TEST_API_KEYS).decode(),
    }
    env.update(overrides)
    return env


@pytest.fixture
def start_api(backends: Backends, tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def start(**overrides: str) -> ApiProcess:
        api = ApiProcess(api_env(backends, **overrides), tmp_path / f"api-{len(started)}.log").start()
        started.append(api)
        api.wait_ready()
        return api

    yield start
    for api in started:
        api.stop()


class WorkerProcess(ServiceProcess):
    """`python -m service.worker`; its probes and metrics share METRICS_PORT."""

    command = ("-m", "service.worker")
    name = "worker"

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        super().__init__(env, logfile, f"http://127.0.0.1:{env['METRICS_PORT']}")


def worker_env(backends: Backends, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENVIRONMENT": "development",
        "DATABASE_URL": backends.database_url,
        "METRICS_PORT": str(servers.free_port()),
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "2",
        # Short clocks so the failure drills run in seconds (production defaults: 30 s lease, 2 s poll).
        "JOB_LEASE_SECONDS": "2",
        "WORKER_POLL_INTERVAL_SECONDS": "0.5",
        "JOB_RETRY_BASE_SECONDS": "0.05",
        "JOB_RETRY_MAX_SECONDS": "0.2",
        "WORKER_SHUTDOWN_GRACE_SECONDS": "10",
    }
    env.update(overrides)
    return env


@pytest.fixture
def start_worker(backends: Backends, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess(worker_env(backends, **overrides), tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()
