"""`make up` / `make down`: the whole topology on one machine, as real processes on loopback.

    client -> nginx :8000 -> API "pods" :8001, :8002 (gunicorn + 1 uvicorn worker each)
                                -> PostgreSQL :55432, Redis :56379
    job worker (python -m service.worker) -> PostgreSQL; probes and metrics on :9466
    with PGBOUNCER=1 (`make up PGBOUNCER=1`): pods and worker -> PgBouncer :56432 (transaction mode)
        -> PostgreSQL, as behind CloudNativePG's Pooler; LISTEN and migrations use PostgreSQL directly
    with REPLICA=1 (`make up REPLICA=1`): a streaming replica :55433 (pg_basebackup) beside the primary;
        everything connects with both hosts and target_session_attrs=read-write, so a failover
        (`make drill ONLY=primary-failover`) needs no change of URL
    Prometheus :9090 scrapes the pods' metrics ports :9464, :9465 and the worker's :9466

State, logs and pid files live under RUN_DIR (.run/). PostgreSQL and Redis are
started here unless DATABASE_URL / REDIS_URL point at servers you run; a port
something else already answers on is refused, never written to. Every port is
an environment variable (see PORT_VARIABLES). Stdlib only, so `down` works even
without the project's virtualenv.

`up` on a running stack starts only what is missing (a dead pod, the worker,
nginx, Prometheus, PostgreSQL, Redis) and leaves the rest serving.
`restart-api` rolls the API pods one at a time the way a Deployment's rolling
update does: the pod leaves nginx's rotation first (the endpoint is removed:
a marker file nginx checks on every request, see `rotation_marker`), then it
gets SIGTERM and drains, its replacement starts, and it rejoins the rotation
once /readyz answers 200. Nothing new is sent to a pod that is stopping or
still starting, and nginx is never reloaded (a reload closes the clients' idle
keep-alive connections, and a request sent on one at that instant gets no
answer), so no request fails. ingress-nginx, too, changes endpoints without a
reload.

When RUN_DIR sits where the `postgres` user cannot go (a clone in root's
mode-0700 home), PostgreSQL's data and nginx's temporary files live in a
directory under /var/tmp named by a hash of RUN_DIR, recorded as `spill_dir`
in stack.json; `down` and `clean` find it there.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import servers

ROOT = Path(__file__).resolve().parents[2]
DATABASE_NAME = "catalog"


@dataclass
class Stack:
    run_dir: Path
    api_port: int
    pod_ports: list[int]
    metrics_ports: list[int]
    prometheus_port: int
    worker_metrics_port: int
    postgres_port: int
    redis_port: int
    pgbouncer_port: int = 56432
    pgbouncer: bool = False  # PGBOUNCER=1: the app reaches PostgreSQL through PgBouncer in transaction mode
    replica_port: int = 55433
    replica: bool = False  # REPLICA=1: a streaming replica of our PostgreSQL, and a multi-host DATABASE_URL
    database_url: str = ""
    redis_url: str = ""
    own_postgres: bool = True
    own_redis: bool = True
    spill_dir: str = ""  # where PostgreSQL's data and nginx's temp files go when RUN_DIR is private
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> Stack:
        run_dir = Path(os.environ.get("RUN_DIR", ROOT / ".run")).resolve()
        pods = os.environ.get("API_POD_PORTS", "8001,8002")
        metrics = os.environ.get("API_POD_METRICS_PORTS", "9464,9465")
        stack = cls(
            run_dir=run_dir,
            api_port=int(os.environ.get("API_PORT", "8000")),
            pod_ports=[int(port) for port in pods.split(",") if port.strip()],
            metrics_ports=[int(port) for port in metrics.split(",") if port.strip()],
            prometheus_port=int(os.environ.get("PROMETHEUS_PORT", "9090")),
            worker_metrics_port=int(os.environ.get("WORKER_METRICS_PORT", "9466")),
            postgres_port=int(os.environ.get("POSTGRES_PORT", "55432")),
            redis_port=int(os.environ.get("REDIS_PORT", "56379")),
            pgbouncer_port=int(os.environ.get("PGBOUNCER_PORT", "56432")),
            pgbouncer=os.environ.get("PGBOUNCER", "") not in ("", "0"),
            replica_port=int(os.environ.get("POSTGRES_REPLICA_PORT", "55433")),
            replica=os.environ.get("REPLICA", "") not in ("", "0"),
            database_url=os.environ.get("DATABASE_URL", ""),
            redis_url=os.environ.get("REDIS_URL", ""),
        )
        if len(stack.metrics_ports) != len(stack.pod_ports):
            raise StackError("API_POD_METRICS_PORTS needs one port per API pod (API_POD_PORTS)")
        stack.own_postgres = not stack.database_url
        if stack.replica and (stack.pgbouncer or not stack.own_postgres):
            raise StackError(
                "REPLICA=1 needs the PostgreSQL `make up` starts (no DATABASE_URL) and no PGBOUNCER=1: "
                "PgBouncer 1.18 cannot follow a failover (behind a pooler, the operator re-points it)"
            )
        stack.own_redis = not stack.redis_url
        return stack

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    def save(self) -> None:
        data = asdict(self) | {"run_dir": str(self.run_dir)}
        self.state_file.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> Stack | None:
        try:
            data = json.loads((run_dir / "stack.json").read_text())
        except FileNotFoundError:
            return None
        data["run_dir"] = Path(data["run_dir"])
        data.setdefault("metrics_ports", [])  # written by an older version
        data.setdefault("prometheus_port", 9090)
        data.setdefault("worker_metrics_port", 9466)
        data.setdefault("spill_dir", "")
        data.setdefault("pgbouncer", False)
        data.setdefault("pgbouncer_port", 56432)
        data.setdefault("replica", False)
        data.setdefault("replica_port", 55433)
        return cls(**data)

    @property
    def shared_dir(self) -> Path:
        """Where files other users (postgres, nginx's workers) must reach go."""
        return Path(self.spill_dir) if self.spill_dir else self.run_dir

    def postgres(self) -> servers.Postgres:
        return servers.Postgres(self.shared_dir / "postgres", self.postgres_port, durable=True)

    def postgres_replica(self) -> servers.Postgres:
        """The second server of REPLICA=1 (a standby at first; the primary after a failover)."""
        return servers.Postgres(self.shared_dir / "postgres-replica", self.replica_port, durable=True)

    def both_hosts_url(self) -> str:
        """Our two servers in one URL: asyncpg connects to whichever accepts writes."""
        hosts = f"127.0.0.1:{self.postgres_port},127.0.0.1:{self.replica_port}"
        return f"postgresql://postgres@{hosts}/{DATABASE_NAME}?target_session_attrs=read-write"

    def redis(self) -> servers.Redis:
        return servers.Redis(self.run_dir / "redis", self.redis_port)

    def pgbouncer_server(self) -> servers.PgBouncer:
        """PgBouncer in transaction mode in front of the stack's PostgreSQL (or DATABASE_URL's server)."""
        parts = urlsplit(self.database_url or servers.Postgres(Path(), self.postgres_port).url())
        return servers.PgBouncer(
            self.shared_dir / "pgbouncer",
            self.pgbouncer_port,
            parts.port or 5432,
            user=parts.username or "postgres",
            password=parts.password or "",
            server_host=parts.hostname or "127.0.0.1",
        )

    def app_database_env(self) -> dict[str, str]:
        """DATABASE_URL and, through PgBouncer, DATABASE_POOL_MODE and DATABASE_DIRECT_URL."""
        if not self.pgbouncer:
            return {"DATABASE_URL": self.database_url}
        parts = urlsplit(self.database_url)
        credentials = parts.netloc.rpartition("@")[0]
        pooled = parts._replace(netloc=f"{credentials}@127.0.0.1:{self.pgbouncer_port}").geturl()
        return {
            "DATABASE_URL": pooled,
            "DATABASE_POOL_MODE": "transaction",
            "DATABASE_DIRECT_URL": self.database_url,
        }


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise servers.MissingDependency("prometheus not found: install it with `apt-get install prometheus`")
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise servers.MissingDependency("nginx not found: install it with `apt-get install nginx`")
    return found


alive = servers.process_alive

# The variable that sets each port: named in every "port in use" message.
PORT_VARIABLES = {
    "api_port": "API_PORT",
    "pod_ports": "API_POD_PORTS",
    "metrics_ports": "API_POD_METRICS_PORTS",
    "prometheus_port": "PROMETHEUS_PORT",
    "worker_metrics_port": "WORKER_METRICS_PORT",
    "postgres_port": "POSTGRES_PORT",
    "redis_port": "REDIS_PORT",
    "pgbouncer_port": "PGBOUNCER_PORT",
    "replica_port": "POSTGRES_REPLICA_PORT",
}


def wait_http(url: str, within_seconds: float, expect: int = 200) -> bool:
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                if response.status == expect:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


def development_key(stack: Stack) -> tuple[str, str]:
    """The development API key (kept in RUN_DIR/api-key across restarts) and its API_KEYS entry."""
    path = stack.run_dir / "api-key"
    if not path.exists():
        path.write_text("cat_" + secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    key = path.read_text().strip()
    entry = {
        "name": "development",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "scopes": ["items:read", "items:write", "jobs:read", "jobs:write"],
    }
    return key, json.dumps([entry])


def app_environment(stack: Stack, port: int, metrics_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ENVIRONMENT", "development")
    if "API_KEYS" not in env:
        env["API_KEYS"] = development_key(stack)[1]
    env.setdefault("SHUTDOWN_DRAIN_SECONDS", "2")
    env.update(
        **stack.app_database_env(),
        REDIS_URL=stack.redis_url,
        HOST="127.0.0.1",
        PORT=str(port),
        METRICS_PORT=str(metrics_port),
    )
    return env


def render_nginx(stack: Stack) -> Path:
    """nginx.conf for the stack: an upstream group per rotation, chosen per request (see `rotation_marker`)."""
    directory = stack.run_dir / "nginx"
    directory.mkdir(parents=True, exist_ok=True)
    temp = stack.shared_dir / "nginx-tmp"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # nginx workers drop to `nobody` and write request bodies here
        for path in [temp, *temp.iterdir()]:
            path.chmod(0o777)
    pods = dict(enumerate(stack.pod_ports, start=1))
    # A single pod has no group without it (nginx refuses an empty upstream): it cannot leave the rotation.
    rotating = list(pods) if len(pods) > 1 else []
    groups = {"api": list(pods)} | {f"api_without_{out}": [i for i in pods if i != out] for out in rotating}
    upstreams = "\n".join(
        f"    upstream {name} {{\n"
        + "".join(f"        server 127.0.0.1:{pods[index]} max_fails=1 fail_timeout=2s;\n" for index in members)
        + "        keepalive 32;\n        keepalive_timeout 60s;\n    }"
        for name, members in groups.items()
    )
    checks = "\n".join(
        f'        if (-f "{rotation_marker(stack, index)}") {{ set $pods api_without_{index}; }}' for index in rotating
    )
    rotation = rotation_marker(stack, 0).parent
    rotation.mkdir(exist_ok=True)
    rotation.chmod(0o755)  # nginx's workers (`nobody` when started as root) must see the markers
    max_body = os.environ.get("MAX_BODY_BYTES", "1048576")
    text = (ROOT / "deploy" / "nginx" / "local.conf.template").read_text()
    for key, value in {
        "RUN_DIR": str(stack.run_dir),
        "TEMP_DIR": str(temp),
        "API_PORT": str(stack.api_port),
        "UPSTREAM_GROUPS": upstreams,
        "ROTATION_CHECKS": checks,
        "MAX_BODY_BYTES": max_body,
    }.items():
        text = text.replace(f"@@{key}@@", value)
    config = directory / "nginx.conf"
    config.write_text(text)
    return config


def rotation_marker(stack: Stack, index: int) -> Path:
    """The file whose presence takes pod `index` out of nginx's rotation (nginx looks on every request).

    It lives where nginx's workers can reach (`shared_dir`): a marker they cannot stat counts as absent.
    """
    return stack.shared_dir / "nginx-rotation" / f"out-{index}"


class StackError(RuntimeError):
    """Something did not start; the message says what and where to look."""


def _start_backends(stack: Stack, missing: list[str]) -> None:
    """Start our PostgreSQL / Redis if missing, then create the database and migrate (both idempotent)."""
    if stack.own_postgres:
        postgres = stack.postgres()
        if "postgres" in missing:
            postgres.start()
        if not stack.replica and not postgres.has_database(DATABASE_NAME):
            postgres.create_database(DATABASE_NAME)
        stack.database_url = postgres.url(DATABASE_NAME)
    if stack.replica:
        _start_pair(stack, missing)
    if stack.own_redis:
        redis = stack.redis()
        if "redis" in missing:
            redis.start()
        stack.redis_url = redis.url()
    if stack.pgbouncer and "pgbouncer" in missing:
        stack.pgbouncer_server().start()
    stack.save()
    migrate_env = app_environment(stack, stack.pod_ports[0], stack.metrics_ports[0])
    if subprocess.run([sys.executable, "-m", "service.migrate"], cwd=ROOT, env=migrate_env, check=False).returncode:
        raise StackError("migrations failed; see the lines above")


def _start_pair(stack: Stack, missing: list[str]) -> None:
    """REPLICA=1: start both servers; the first time, create the database on the primary and
    clone the replica from it. After a failover either may be the primary: the URL names both."""
    first, second = stack.postgres(), stack.postgres_replica()
    if "postgres-replica" in missing and (second.datadir / "PG_VERSION").exists():
        second.start()
    primary = first if not (first.datadir / "standby.signal").exists() else second
    if not primary.has_database(DATABASE_NAME):
        primary.create_database(DATABASE_NAME)
    if not (second.datadir / "PG_VERSION").exists():
        second.clone_from(first)
        second.start()
    stack.database_url = stack.both_hosts_url()


def _start_pod(stack: Stack, index: int) -> None:
    port, metrics_port = stack.pod_ports[index - 1], stack.metrics_ports[index - 1]
    with (stack.run_dir / f"api-{index}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"],
            cwd=ROOT,
            env=app_environment(stack, port, metrics_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.pids[f"api-{index}"] = process.pid
    stack.save()


def _wait_pods_ready(stack: Stack, indices: list[int]) -> None:
    for index in indices:
        if not wait_http(f"http://127.0.0.1:{stack.pod_ports[index - 1]}/readyz", 30):
            raise StackError(f"api-{index} did not become ready; see {stack.run_dir / f'api-{index}.log'}")


def _start_pods(stack: Stack, indices: list[int]) -> None:
    """Start the pods `indices` (at `make up`, or to replace dead ones) and wait until they are ready.

    nginx is not reloaded for this: a reload closes clients' idle keep-alive connections,
    and a POST a client sends on one at that instant is lost. A dead pod's port refuses
    connections, which nginx answers by trying the other pod (safe even for a POST: nothing
    was sent); once the replacement listens, requests wait in its accept queue until it serves.
    """
    for index in indices:
        _start_pod(stack, index)
    _wait_pods_ready(stack, indices)


def worker_environment(stack: Stack) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ENVIRONMENT", "development")
    env.setdefault("WORKER_SHUTDOWN_GRACE_SECONDS", "10")
    env.update(**stack.app_database_env(), METRICS_PORT=str(stack.worker_metrics_port))
    return env


def _start_worker(stack: Stack) -> None:
    with (stack.run_dir / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.worker"],
            cwd=ROOT,
            env=worker_environment(stack),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.pids["worker"] = process.pid
    stack.save()
    if not wait_http(f"http://127.0.0.1:{stack.worker_metrics_port}/readyz", 30):
        raise StackError(f"the worker did not become ready; see {stack.run_dir / 'worker.log'}")


def _start_nginx(stack: Stack) -> None:
    nginx = nginx_binary()
    config = render_nginx(stack)
    check = subprocess.run(
        [nginx, "-t", "-q", "-c", str(config), "-p", str(config.parent)], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        raise StackError(f"nginx rejected {config}:\n{check.stderr}")
    subprocess.run([nginx, "-c", str(config), "-p", str(config.parent)], check=True)
    stack.pids["nginx"] = int((config.parent / "nginx.pid").read_text())
    stack.save()
    if not wait_http(f"http://127.0.0.1:{stack.api_port}/readyz", 15):
        raise StackError(f"nginx did not answer /readyz; see {config.parent / 'error.log'}")


def _start_prometheus(stack: Stack) -> None:
    directory = stack.run_dir / "prometheus"
    (directory / "targets").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "monitoring" / "prometheus" / "prometheus.yml", directory / "prometheus.yml")
    shutil.rmtree(directory / "rules", ignore_errors=True)  # a rule file deleted from the repo goes too
    shutil.copytree(ROOT / "monitoring" / "prometheus" / "rules", directory / "rules")
    targets = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"pod": f"api-{index}"}}
        for index, port in enumerate(stack.metrics_ports, start=1)
    ]
    (directory / "targets" / "api.json").write_text(json.dumps(targets, indent=2) + "\n")
    worker = [{"targets": [f"127.0.0.1:{stack.worker_metrics_port}"], "labels": {"pod": "worker-1"}}]
    (directory / "targets" / "worker.json").write_text(json.dumps(worker, indent=2) + "\n")
    with (directory / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                "--storage.tsdb.retention.time=2d",
                f"--web.listen-address=127.0.0.1:{stack.prometheus_port}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.pids["prometheus"] = process.pid
    stack.save()
    if not wait_http(f"http://127.0.0.1:{stack.prometheus_port}/-/ready", 30):
        raise StackError(f"Prometheus did not become ready; see {directory / 'prometheus.log'}")


def _components(stack: Stack) -> list[str]:
    """Everything `up` runs, in start order."""
    return [
        *(["postgres"] if stack.own_postgres else []),
        *(["postgres-replica"] if stack.replica else []),
        *(["redis"] if stack.own_redis else []),
        *(["pgbouncer"] if stack.pgbouncer else []),
        *(f"api-{index}" for index in range(1, len(stack.pod_ports) + 1)),
        "worker",
        "nginx",
        "prometheus",
    ]


def _running(stack: Stack, component: str) -> bool:
    if component == "postgres":
        return stack.postgres().running()
    if component == "redis":
        return stack.redis().running()
    if component == "pgbouncer":
        return stack.pgbouncer_server().running()
    if component == "postgres-replica":
        return stack.postgres_replica().running()
    return alive(stack.pids.get(component, 0))


def _ports(stack: Stack, component: str) -> list[tuple[int, str]]:
    """The ports `component` listens on, each with the variable that sets it."""
    if component.startswith("api-"):
        index = int(component.removeprefix("api-")) - 1
        return [(stack.pod_ports[index], "API_POD_PORTS"), (stack.metrics_ports[index], "API_POD_METRICS_PORTS")]
    field_name = {
        "postgres": "postgres_port",
        "redis": "redis_port",
        "pgbouncer": "pgbouncer_port",
        "postgres-replica": "replica_port",
        "worker": "worker_metrics_port",
        "nginx": "api_port",
        "prometheus": "prometheus_port",
    }[component]
    return [(getattr(stack, field_name), PORT_VARIABLES[field_name])]


def _busy_ports(stack: Stack, missing: list[str]) -> list[str]:
    """Ports a missing component needs that something else holds, each as a line saying what to do."""
    busy: list[str] = []
    # An API pod whose gunicorn master was killed leaves its uvicorn worker behind for up to
    # a second (it notices the master is gone on its next tick): give such ports a moment.
    deadline = time.monotonic() + 3
    for component in missing:
        for port, variable in _ports(stack, component):
            while servers.port_open(port) and component.startswith("api-") and time.monotonic() < deadline:
                time.sleep(0.1)
            if not servers.port_open(port):
                continue
            if component == "postgres":
                busy.append(
                    f"port {port} (POSTGRES_PORT) is taken by a server `make up` did not start; `make up` writes "
                    "only to servers it started or that DATABASE_URL names: set POSTGRES_PORT to a free port, "
                    "or DATABASE_URL to use that server"
                )
            elif component == "redis":
                busy.append(
                    f"port {port} (REDIS_PORT) is taken by a server `make up` did not start; `make up` writes "
                    "only to servers it started or that REDIS_URL names: set REDIS_PORT to a free port, "
                    "or REDIS_URL to use that server"
                )
            else:
                busy.append(
                    f"port {port} ({variable}, for {component}) is already in use: set {variable} to a free one"
                )
    return busy


def _changed_settings(running: Stack, requested: Stack) -> list[str]:
    changed = [
        variable
        for field_name, variable in PORT_VARIABLES.items()
        if getattr(running, field_name) != getattr(requested, field_name)
    ]
    if running.own_postgres != requested.own_postgres or (
        not requested.own_postgres and running.database_url != requested.database_url
    ):
        changed.append("DATABASE_URL")
    if running.pgbouncer != requested.pgbouncer:
        changed.append("PGBOUNCER")
    if running.replica != requested.replica:
        changed.append("REPLICA")
    if running.own_redis != requested.own_redis or (
        not requested.own_redis and running.redis_url != requested.redis_url
    ):
        changed.append("REDIS_URL")
    return changed


def up() -> int:
    requested = Stack.from_environment()
    stack = Stack.load(requested.run_dir)
    repairing = stack is not None and any(_running(stack, component) for component in _components(stack))
    if stack is not None and repairing:
        changed = _changed_settings(stack, requested)
        if changed:
            print(
                f"note: the stack is running with other {', '.join(changed)}; keeping those "
                "(`make down` first to change them)",
                file=sys.stderr,
            )
    else:
        stack = requested
    nginx_binary()  # fail before starting anything if something is missing
    prometheus_binary()
    missing = [component for component in _components(stack) if not _running(stack, component)]
    busy = _busy_ports(stack, missing)
    if busy:
        print("make up: " + "\n         ".join(busy), file=sys.stderr)
        return 1
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    if not stack.spill_dir and not servers.reachable_by("postgres", stack.run_dir):
        stack.spill_dir = str(servers.spill_directory(stack.run_dir))
    if repairing:
        print(f"already running: {', '.join(c for c in _components(stack) if c not in missing)}")
        print(f"starting: {', '.join(missing) or 'nothing, everything runs'}")
    try:
        _start_backends(stack, missing)
        _start_pods(stack, [int(c.removeprefix("api-")) for c in missing if c.startswith("api-")])
        if "worker" in missing:
            _start_worker(stack)
        if "nginx" in missing:
            _start_nginx(stack)
        if "prometheus" in missing:
            _start_prometheus(stack)
        _rejoin_rotation(stack)
    except (StackError, RuntimeError) as error:
        print(f"make up failed: {error}", file=sys.stderr)
        if not repairing:
            down(stack.run_dir)
        return 1
    _print_summary(stack)
    return 0


def _rejoin_rotation(stack: Stack) -> None:
    """Put back in rotation a ready pod an interrupted `restart-api` left out."""
    for index, port in enumerate(stack.pod_ports, start=1):
        marker = rotation_marker(stack, index)
        if marker.exists() and wait_http(f"http://127.0.0.1:{port}/readyz", 30):
            marker.unlink()
            print(f"api-{index} is back in nginx's rotation (an interrupted `restart-api` had taken it out)")


def _print_summary(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.api_port}"
    key_line = (
        f"  API key (writes)     {development_key(stack)[0]}   (also in {stack.run_dir / 'api-key'})"
        if "API_KEYS" not in os.environ
        else "  API keys             from your API_KEYS"
    )
    pgbouncer_line = (
        f"\n  PgBouncer            {stack.app_database_env()['DATABASE_URL']}   (transaction mode; the pods and the "
        "worker go through it)"
        if stack.pgbouncer
        else ""
    )
    print(f"""
Catalog API is up (development mode).
  API (through nginx)  {base}/v1/items
  OpenAPI docs         {base}/docs
  Readiness            {base}/readyz
  API pods             {", ".join(f"http://127.0.0.1:{port}" for port in stack.pod_ports)}
  Pod metrics          {", ".join(f"http://127.0.0.1:{port}/metrics" for port in stack.metrics_ports)}
  Job worker           http://127.0.0.1:{stack.worker_metrics_port}/metrics (POST {base}/v1/jobs)
  Prometheus           http://127.0.0.1:{stack.prometheus_port}
  PostgreSQL           {stack.database_url}{f"   (data in {stack.postgres().directory})" if stack.own_postgres else ""}
  Redis                {stack.redis_url}{pgbouncer_line}
  Logs                 {stack.run_dir}/api-*.log, worker.log, nginx/access.log
{key_line}
Stop everything with `make down`; roll the API pods with `make restart-api`.""")


def restart_api() -> int:
    """Replace the API pods one at a time; each leaves nginx's rotation before it stops."""
    run_dir = Stack.from_environment().run_dir
    stack = Stack.load(run_dir)
    if stack is None or not alive(stack.pids.get("nginx", 0)):
        raise StackError(f"nginx is not running (state: {run_dir / 'stack.json'}): `make up` first")
    config = run_dir / "nginx" / "nginx.conf"
    if len(stack.pod_ports) < 2:
        raise StackError("restart-api replaces one pod while the others serve: API_POD_PORTS needs two pods or more")
    if str(rotation_marker(stack, 1)) not in config.read_text():
        raise StackError(f"the running nginx has no rotation markers ({config} is older): `make down && make up`")
    for index in range(1, len(stack.pod_ports) + 1):
        name = f"api-{index}"
        started = time.monotonic()
        rotation_marker(stack, index).touch()  # from the next request on, nginx routes around the pod
        if alive(stack.pids.get(name, 0)):
            # SIGTERM: the pod drains (readyz 503) and finishes in-flight requests, and serves one that
            # nginx routed just before the marker appeared; nginx sends it nothing new.
            _stop_pid(stack.pids[name], signal.SIGTERM, 40)
        for port, variable in _ports(stack, name):
            if servers.port_open(port):
                raise StackError(f"port {port} ({variable}) of {name} is still taken after it stopped")
        _start_pod(stack, index)
        _wait_pods_ready(stack, [index])
        rotation_marker(stack, index).unlink()
        print(f"{name} replaced (pid {stack.pids[name]}) in {time.monotonic() - started:.1f} s")
    return 0


def _stop_pid(pid: int, sig: signal.Signals, within_seconds: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + within_seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def down(run_dir: Path | None = None) -> int:
    run_dir = run_dir or Stack.from_environment().run_dir
    stack = Stack.load(run_dir)
    if stack is None:
        print(f"nothing to stop ({run_dir / 'stack.json'} not found)")
        return 0
    if "prometheus" in stack.pids:
        _stop_pid(stack.pids.pop("prometheus"), signal.SIGTERM, 20)
    if "nginx" in stack.pids:
        _stop_pid(stack.pids.pop("nginx"), signal.SIGQUIT, 10)
    if "worker" in stack.pids:
        # SIGTERM: running jobs get WORKER_SHUTDOWN_GRACE_SECONDS, then are released.
        _stop_pid(stack.pids.pop("worker"), signal.SIGTERM, 30)
    for name in [name for name in stack.pids if name.startswith("api-")]:
        # SIGTERM: the graceful path a pod takes (drain, finish in-flight, close pools).
        _stop_pid(stack.pids.pop(name), signal.SIGTERM, 40)
    if stack.pgbouncer:
        stack.pgbouncer_server().stop()
    if stack.own_redis:
        stack.redis().stop()
    if stack.replica:
        stack.postgres_replica().stop()
    if stack.own_postgres:
        stack.postgres().stop()
    stack.save()
    print(
        "stopped: Prometheus, nginx, worker, API pods"
        + (", PgBouncer" if stack.pgbouncer else "")
        + (", Redis" if stack.own_redis else "")
        + (", PostgreSQL" if stack.own_postgres else "")
        + (" and its replica" if stack.replica else "")
        + f" (data kept in {stack.shared_dir if stack.own_postgres else run_dir})"
    )
    return 0


def clean() -> int:
    """`make clean`: stop everything, then remove RUN_DIR and the spill directory, if any."""
    run_dir = Stack.from_environment().run_dir
    stack = Stack.load(run_dir)
    down(run_dir)
    if stack is not None and stack.spill_dir:
        shutil.rmtree(stack.spill_dir, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"removed {run_dir}" + (f" and {stack.spill_dir}" if stack is not None and stack.spill_dir else ""))
    return 0


def status() -> int:
    stack = Stack.load(Stack.from_environment().run_dir)
    if stack is None or not stack.pids:
        print("not running")
        return 1
    for name, pid in stack.pids.items():
        print(f"{name:11} pid {pid:<8} {'running' if alive(pid) else 'stopped'}")
    return 0 if all(alive(pid) for pid in stack.pids.values()) else 1


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status, "restart-api": restart_api, "clean": clean}
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: {argv[0]} {'|'.join(commands)}", file=sys.stderr)
        return 2
    try:
        return commands[argv[1]]()
    except servers.MissingDependency as missing:
        print(f"missing: {missing}", file=sys.stderr)
        return 1
    except StackError as error:
        print(f"make {argv[1]}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
