"""Throwaway PostgreSQL and Redis servers from the system's binaries (stdlib only).

Used by the test suite (a fresh pair per session, under a temporary
directory) and by `make up` (a pair under .run/ that outlives the command).
PostgreSQL refuses to run as root, so as root every PostgreSQL command runs
as the `postgres` system user in a directory it owns. When that directory
would sit where `postgres` cannot go (a clone in root's mode-0700 home),
`spill_directory` gives a place it can reach, under /var/tmp, named by a hash
of the path it stands in for, so the same clone finds the same data again.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class MissingDependency(RuntimeError):
    """A system binary is not installed; the message says which and how to get it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def process_alive(pid: int) -> bool:
    """`pid` runs (a zombie, dead but not yet reaped, does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False  # exited since kill(0)
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state != "Z"


def postgres_bindir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned dirs."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    raise MissingDependency(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
        "`apt-get install postgresql` or set DATABASE_URL to a running server"
    )


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise MissingDependency(
            "redis-server not found: install it with `apt-get install redis-server` "
            "or set REDIS_URL to a running server"
        )
    return found


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_postgres_user(command: list[str]) -> list[str]:
    if not _running_as_root():
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise MissingDependency(
            "running as root needs the `postgres` system user (apt-get install postgresql)"
        ) from None
    return ["runuser", "-u", "postgres", "--", *command]


def reachable_by(user: str, path: Path) -> bool:
    """Whether `user` can reach `path` (search permission on it and every parent). Not root: always."""
    if not _running_as_root():
        return True
    check = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True, check=False)
    return check.returncode == 0


SPILL_ROOT = Path("/var/tmp")  # noqa: S108 - every user can reach it; entries are checked before use


def spill_path(stands_in_for: Path) -> Path:
    """The name `spill_directory` gives (nothing is created)."""
    digest = hashlib.sha256(str(stands_in_for.resolve()).encode()).hexdigest()[:16]
    return SPILL_ROOT / f"catalog-{digest}"


def spill_directory(stands_in_for: Path) -> Path:
    """A root-owned, world-traversable directory for state that other users (postgres, nginx's
    workers) must reach but `stands_in_for` cannot hold: its parents shut them out.

    The name is a hash of `stands_in_for`, so the same clone finds the same data again. /var/tmp is
    shared: an existing entry is used only if it is a real directory (not a symlink) that root owns
    and nobody else may write to, and entries are created inside it by root alone.
    """
    path = spill_path(stands_in_for)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise MissingDependency(
                f"{path} exists but is not a directory only root can write to: remove it and try again"
            ) from None
    path.chmod(0o755)
    return path


def server_workdir(prefix: str) -> Path:
    """A fresh directory for throwaway servers that the postgres user can reach (mode 0755).

    In the system's temporary directory unless that is private (libpam-tmpdir's /tmp/user/0,
    a TMPDIR inside root's home): then under SPILL_ROOT.
    """
    base = Path(tempfile.gettempdir())
    if not reachable_by("postgres", base):
        base = SPILL_ROOT
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    workdir.chmod(0o755)
    return workdir


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


@dataclass
class Postgres:
    """A PostgreSQL cluster in `directory`, listening on `listen`:`port` (127.0.0.1 unless told)."""

    directory: Path
    port: int
    durable: bool = False  # tests trade durability for speed; `make up` keeps its data safe
    settings: tuple[str, ...] = ()  # extra `-c name=value` server settings, e.g. "log_statement=all"
    listen: str = "127.0.0.1"  # the local cluster's pods reach it at the node address (tests/cluster)
    clients: tuple[str, ...] = ()  # more client networks (CIDR) let in without a password, e.g. the pod range

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def logfile(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/{database}"

    def _pg(self, tool: str) -> str:
        return str(postgres_bindir() / tool)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            postgres = pwd.getpwnam("postgres")
            os.chown(self.directory, postgres.pw_uid, postgres.pw_gid)
        if (
            _running_as_root()
            and subprocess.run(_as_postgres_user(["test", "-w", str(self.directory)]), check=False).returncode
        ):
            raise MissingDependency(
                f"the postgres user cannot reach {self.directory}: make its parent directories "
                "traversable (chmod o+x) or set DATABASE_URL to a running server"
            )
        if (self.datadir / "PG_VERSION").exists():
            return
        _run(
            _as_postgres_user(
                [
                    self._pg("initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            "initdb",
        )
        # initdb lets in 127.0.0.1 only; a server listening elsewhere is also reached at its own address.
        networks = ([f"{self.listen}/32"] if self.listen != "127.0.0.1" else []) + list(self.clients)
        if networks:
            with (self.datadir / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in networks)

    def start(self) -> None:
        self.init()
        options = [
            f"-p {self.port}",
            f"-c listen_addresses={self.listen}",
            f"-k {self.directory}",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {setting}" for setting in self.settings]
        _run(
            _as_postgres_user(
                [
                    self._pg("pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join(options),
                    "start",
                ]
            ),
            "pg_ctl start",
        )

    def running(self) -> bool:
        """This cluster's postmaster is alive and listening on `port` (not just any server there)."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return False
        return port == self.port and process_alive(pid) and port_open(self.port, self.listen)

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        _run(
            _as_postgres_user([self._pg("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
        )

    def create_database(self, name: str) -> None:
        _run(
            _as_postgres_user([self._pg("createdb"), "-h", self.listen, "-p", str(self.port), "-U", "postgres", name]),
            f"createdb {name}",
        )

    def has_database(self, name: str) -> bool:
        result = subprocess.run(
            _as_postgres_user(
                [
                    self._pg("psql"),
                    "-h",
                    self.listen,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-Atc",
                    f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() == "1"


@dataclass
class Redis:
    """A Redis server in `directory`, listening on `listen`:`port` (127.0.0.1 unless told), with no persistence."""

    directory: Path
    port: int
    listen: str = "127.0.0.1"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    def url(self, db: int = 0) -> str:
        return f"redis://{self.listen}:{self.port}/{db}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _run(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                self.listen,
                # Off the loopback Redis refuses clients without a password unless told otherwise.
                "--protected-mode",
                "no" if self.listen != "127.0.0.1" else "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            "redis-server",
        )
        deadline = time.monotonic() + 10
        while not port_open(self.port, self.listen):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not listen on {self.port}; see {self.directory / 'redis.log'}")
            time.sleep(0.05)

    def running(self) -> bool:
        """This server (by its pid file) is alive and listening on `port`."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        return process_alive(pid) and port_open(self.port, self.listen)

    def stop(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while port_open(self.port, self.listen) and time.monotonic() < deadline:
            time.sleep(0.05)
