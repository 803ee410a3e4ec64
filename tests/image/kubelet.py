"""What a kubelet does to a running container, done to a Docker container.

- `Container`: one derived `ContainerRun` started under a name, with its logs,
  exit code and the credentials of its PID 1.
- `Prober`: runs the container's probes on their own clock, as the kubelet
  does: the startup probe until it succeeds (or fails `failureThreshold`
  times in a row: the kubelet would restart the container), then readiness
  and liveness, each every `periodSeconds` with its `timeoutSeconds`.
- `stop()`: the kubelet's termination: the preStop hook (a sleep the kubelet
  itself waits, or a command run in the container), then the image's stop
  signal (SIGTERM), then SIGKILL when terminationGracePeriodSeconds, counted
  from the start of the hook, has passed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.image.engine import Engine
from tests.image.podspec import ContainerRun, Probe


@dataclass
class Container:
    engine: Engine
    run: ContainerRun
    name: str
    env_file: Path
    started_at: float = 0.0

    def start(self) -> Container:
        self.engine.docker("rm", "-f", self.name, check=False)
        self.started_at = time.monotonic()
        self.engine.docker(*self.run.docker_run(self.name, self.env_file))
        return self

    def running(self) -> bool:
        result = self.engine.docker("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def wait(self, timeout: float) -> int:
        """The exit code, once the container stopped (raises TimeoutError after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return self.exit_code()
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} still running after {timeout:g} s")

    def exit_code(self) -> int:
        return int(self.engine.docker("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def logs(self) -> str:
        result = self.engine.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str, timeout: float = 60) -> str:
        """Run `command` inside the container (as its user, under its security settings)."""
        return self.engine.docker("exec", self.name, *command, timeout=timeout).stdout

    def process_status(self) -> dict[str, str]:
        """/proc/1/status of the container's PID 1 (Uid, Gid, Groups, CapEff, NoNewPrivs, Seccomp, ...)."""
        lines = self.exec("cat", "/proc/1/status").splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def remove(self) -> None:
        self.engine.docker("rm", "-f", self.name, check=False)


@dataclass
class ProbeResult:
    kind: str
    at: float  # seconds since the container started
    ok: bool
    status: int | None


@dataclass
class Prober:
    """The kubelet's prober for one container, in a thread; results are kept in order."""

    container: Container
    results: list[ProbeResult] = field(default_factory=list)
    started_at: float | None = None  # when the startup probe first passed (container clock)
    ready_at: float | None = None  # when readiness first passed
    startup_failed: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _check(self, kind: str, probe: Probe, client: httpx.Client) -> bool:
        status: int | None = None
        with contextlib.suppress(httpx.HTTPError):
            status = client.get(f"http://127.0.0.1:{probe.port}{probe.path}", timeout=probe.timeout_seconds).status_code
        ok = status is not None and 200 <= status < 400  # the kubelet's rule for httpGet
        self.results.append(ProbeResult(kind, time.monotonic() - self.container.started_at, ok, status))
        return ok

    def _loop(self) -> None:
        probes = self.container.run.probes
        with httpx.Client() as client:
            if "startup" in probes:
                startup = probes["startup"]
                self._stop.wait(startup.initial_delay_seconds)
                failures = 0
                while not self._stop.is_set():
                    if self._check("startup", startup, client):
                        break
                    failures += 1
                    if failures >= startup.failure_threshold:
                        self.startup_failed = True
                        return
                    self._stop.wait(startup.period_seconds)
            self.started_at = time.monotonic() - self.container.started_at
            due = {kind: 0.0 for kind in ("readiness", "liveness") if kind in probes}
            while not self._stop.is_set():
                now = time.monotonic()
                for kind, at in due.items():
                    if now >= at:
                        ok = self._check(kind, probes[kind], client)
                        if kind == "readiness" and ok and self.ready_at is None:
                            self.ready_at = time.monotonic() - self.container.started_at
                        due[kind] = now + probes[kind].period_seconds
                self._stop.wait(0.05)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from container start to the first passing readiness probe."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_at is not None:
                return self.ready_at
            if self.startup_failed:
                raise AssertionError(f"startup probe failed its threshold:\n{self.container.logs()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"not ready within {timeout:g} s:\n{self.container.logs()[-4000:]}")

    def of(self, kind: str) -> list[ProbeResult]:
        return [result for result in self.results if result.kind == kind]

    def longest_failure_streak(self, kind: str) -> int:
        longest = streak = 0
        for result in self.of(kind):
            streak = 0 if result.ok else streak + 1
            longest = max(longest, streak)
        return longest


@dataclass(frozen=True)
class Termination:
    exit_code: int
    signalled_after: float  # seconds from the start of termination to the stop signal
    exited_after: float  # seconds from the start of termination to exit
    killed: bool  # SIGKILL was needed


def stop(container: Container, on_signal: threading.Event | None = None) -> Termination:
    """Terminate `container` as the kubelet does; `on_signal` is set when the stop signal is sent."""
    run = container.run
    begin = time.monotonic()
    deadline = begin + run.grace_seconds
    if run.pre_stop is not None:
        if run.pre_stop.exec_command:
            container.engine.docker("exec", container.name, *run.pre_stop.exec_command, timeout=run.grace_seconds)
        time.sleep(run.pre_stop.sleep_seconds)
    signalled = time.monotonic() - begin
    container.engine.docker("kill", "--signal", "SIGTERM", container.name)
    if on_signal is not None:
        on_signal.set()
    killed = False
    try:
        code = container.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except TimeoutError:
        container.engine.docker("kill", "--signal", "SIGKILL", container.name, check=False)
        killed = True
        code = container.wait(timeout=30)
    return Termination(code, signalled, time.monotonic() - begin, killed)
