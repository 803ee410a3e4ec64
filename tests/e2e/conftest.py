"""Real server processes: gunicorn with our worker, started the way a pod starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import servers  # deploy/local, put on sys.path by tests/conftest.py

from tests.conftest import ROOT, TEST_API_KEYS, TEST_SECRET_KEY, Backends

pytestmark = pytest.mark.e2e


class ApiProcess:
    """`gunicorn -c python:service.gunicorn_conf` in a subprocess, logging JSON lines to a file."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.env = env
        self.logfile = logfile
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiProcess:
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.logfile.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout} s:\n{self.logfile.read_text()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def logs(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.logfile.read_bytes().splitlines() if line.startswith(b"{")]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # quick shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the master and its worker
                self.process.wait()


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
