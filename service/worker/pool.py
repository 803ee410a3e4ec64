"""Child processes that run jobs: one long-lived process per slot, killed and replaced on timeout.

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot stop one running
task. Killing one of its processes breaks the whole pool, and cancelling the
future leaves the work running. A hard per-job timeout needs a process we own,
so each slot owns one child; a job that overruns gets its child SIGKILLed and
the slot starts a fresh one. The children come from a fork server that has
imported the job kinds already, so a replacement starts in milliseconds.

Children run at a lower CPU priority than the worker itself (nice +10) and
ignore SIGINT and SIGTERM (the worker decides when they stop).

Guarantee: when the worker dies, by any signal or exit, the kernel SIGKILLs
the fork server and, through it, every job process, within milliseconds (tested
with SIGKILL, SIGTERM then SIGKILL, SIGSEGV, SIGUSR1 and SIGABRT: under a second,
outside a container where the worker is not PID 1). A job whose worker is gone
must not keep running: its lease expires and another worker runs it again.

How: `PR_SET_PDEATHSIG` fires when the *parent* dies, and a job process's parent
is the fork server, not the worker. multiprocessing's fork server would exit
when the worker goes (EOF on a pipe from it), but every process it forks
inherits that pipe's write end, so while a job runs the EOF never comes. So
the death signal is set at both links of the chain: the fork server, preloaded
with `service.worker.forkserver`, dies with the worker (the worker's pid comes
in WORKER_PID_VARIABLE), and each job process dies with the fork server. Each
link checks `getppid()` after setting the signal: a parent that died before
`prctl` left the process reparented and the signal would never come, so it
exits at once instead. The fork server is started from the worker's main
thread (the death signal follows the thread that forked), which lives as long
as the worker does.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from service.jobs.kinds import KINDS, JobContext, PermanentJobError
from service.logging import configure_logging, job_id_var, request_id_var

logger = logging.getLogger(__name__)

Status = Literal["ok", "error", "permanent"]
_PR_SET_PDEATHSIG = 1
CHILD_NICENESS = 10
# Tells the fork server which process it must not outlive (set by the worker before starting it).
WORKER_PID_VARIABLE = "CATALOG_JOB_WORKER_PID"
# Set in the fork server by guard_fork_server(); the job processes it forks inherit it.
_fork_server_pid: int | None = None


class JobTimedOut(Exception):
    def __init__(self, seconds: float, pid: int | None) -> None:
        super().__init__(f"timed out after {seconds:g} s; child process {pid} killed")
        self.pid = pid


class ChildDied(Exception):
    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        super().__init__(f"child process {pid} died (exit code {exitcode}) while running the job")


def die_with(parent: int) -> None:
    """SIGKILL this process when its parent, `parent`, dies; exit at once if it is gone already."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The signal covers deaths from now on only. A parent that died earlier left this
    # process reparented (to init or a subreaper): nobody would ever stop it.
    if os.getppid() != parent:
        os._exit(1)


def guard_fork_server() -> None:
    """In the fork server (see service.worker.forkserver): die with the worker that started it."""
    global _fork_server_pid  # noqa: PLW0603 - inherited by every process the fork server forks
    die_with(int(os.environ.get(WORKER_PID_VARIABLE, os.getppid())))
    _fork_server_pid = os.getpid()


def _describe(error: BaseException) -> str:
    """The error as stored on the job: type, message and the innermost frames of the traceback."""
    frames = traceback.format_exception(error, limit=-3)
    return "".join(frames).strip()[-2000:]


def _child_main(conn: multiprocessing.connection.Connection, log_level: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with(_fork_server_pid if _fork_server_pid is not None else os.getppid())
    # Jobs may use every CPU the pod has; the worker's own loop (lease heartbeats, probes,
    # recording outcomes) must still get its turn, or busy children would cost it its leases.
    os.nice(CHILD_NICENESS)
    configure_logging(log_level)
    while True:
        try:
            kind_name, params, context = conn.recv()
        except (EOFError, OSError):
            return  # the worker closed the pipe: time to go
        request_id_var.set(context.request_id)
        job_id_var.set(context.job_id)
        status: Status
        try:
            kind = KINDS[kind_name]
            result = kind.run(kind.params.model_validate(params), context)
            payload: Any = orjson.loads(orjson.dumps(result))  # refuse what cannot be stored as JSON, here
            status = "ok"
        except (PermanentJobError, ValidationError, KeyError) as error:
            status, payload = "permanent", _describe(error)
        except Exception as error:  # noqa: BLE001 - any failure of the job is reported, never fatal to the child
            status, payload = "error", _describe(error)
        conn.send((status, payload))


class Slot:
    """One child process and the pipe to it; runs one job at a time."""

    def __init__(self, context: ForkServerContext, index: int, log_level: str) -> None:
        self._context = context
        self.index = index
        self._log_level = log_level
        self._process: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_child_main, args=(child, self._log_level), name=f"job-slot-{self.index}", daemon=True
        )
        process.start()
        child.close()  # only the child holds its end: its death reads as EOF here
        self._process, self._conn = process, parent

    def stop(self) -> None:
        """Kill the child (if any) and reap it."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process.close()
        self._process = self._conn = None

    async def run(
        self, kind: str, params: dict[str, Any], context: JobContext, limit_seconds: float
    ) -> tuple[Status, Any]:
        """Run one job in the child. Past `limit_seconds`, or if the caller is cancelled, the child is killed."""
        if self._process is None or not self._process.is_alive():
            self.stop()
            self.start()
        assert self._conn is not None
        conn = self._conn
        conn.send((kind, params, context))
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        fd = conn.fileno()
        loop.add_reader(fd, on_readable)
        try:
            try:
                async with asyncio.timeout(limit_seconds):
                    await readable
            finally:
                # Before the pipe can be closed: the next child's pipe may get the same fd
                # number, and a stale registration would swallow its readiness.
                loop.remove_reader(fd)
        except TimeoutError:
            pid = self.pid
            self.stop()
            raise JobTimedOut(limit_seconds, pid) from None
        except asyncio.CancelledError:
            self.stop()  # nobody wants the result any more: free the CPU now
            raise
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            pid, exitcode = self.pid, self._process.exitcode if self._process else None
            self.stop()
            raise ChildDied(pid, exitcode) from None
        return status, payload


class SlotPool:
    """`size` slots; `acquire` waits for a free one."""

    def __init__(self, size: int, log_level: str) -> None:
        context = multiprocessing.get_context("forkserver")
        # The fork server first ties its life to this worker's, then imports the job kinds
        # (and their libraries) once; children fork from it.
        os.environ[WORKER_PID_VARIABLE] = str(os.getpid())
        context.set_forkserver_preload(["service.worker.forkserver", "service.jobs.kinds"])
        self.size = size
        self._slots = [Slot(context, index, log_level) for index in range(size)]
        self._free: asyncio.Queue[Slot] = asyncio.Queue()

    def start(self) -> None:
        for slot in self._slots:
            slot.start()
            self._free.put_nowait(slot)

    def stop(self) -> None:
        for slot in self._slots:
            slot.stop()

    @property
    def free(self) -> int:
        return self._free.qsize()

    def take(self) -> Slot:
        """A free slot; call only when `free` > 0."""
        return self._free.get_nowait()

    def give_back(self, slot: Slot) -> None:
        self._free.put_nowait(slot)

    def pids(self) -> list[int]:
        return [slot.pid for slot in self._slots if slot.pid is not None]


@contextmanager
def slot_pool(size: int, log_level: str) -> Iterator[SlotPool]:
    pool = SlotPool(size, log_level)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
