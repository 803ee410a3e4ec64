"""Throwaway PostgreSQL and Redis on the host for Tilt on the cluster of `make cluster`.

The Tiltfile's `backends` resource runs this in the foreground (`serve_cmd`): it starts
both servers from the system's binaries (deploy/local/servers.py, as `make up` does),
listening on the node address (and loopback) where the pods reach them, as a managed
database sits outside a real cluster; it creates the `catalog` database, prints the
URLs, and stops both when Tilt stops it (SIGTERM or SIGINT). The data directory is kept
between runs, so a restart of Tilt keeps what you stored (`rm -rf` it for a fresh start).

    python deploy/cluster/tilt_backends.py --address 198.19.255.1 \\
        --database-port 15432 --redis-port 16379 --directory .run/tilt/backends

PostgreSQL trusts the pod network (198.18.0.0/16) and the node address: throwaway data,
no passwords, never reachable from outside this machine (the cluster forwards nothing out).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local"))

import servers

POD_NETWORK = "198.18.0.0/16"
DATABASE = "catalog"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the node address the pods reach the host at")
    parser.add_argument("--database-port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True, help="data and logs (kept between runs)")
    args = parser.parse_args()

    directory = args.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    # PostgreSQL runs as the postgres user, who may not reach a clone in root's home: then
    # its data goes where it can (servers.spill_directory, as `make up` does).
    root = directory if servers.reachable_by("postgres", directory) else servers.spill_directory(directory)
    postgres = servers.Postgres(root / "postgres", args.database_port, listen=args.address, clients=(POD_NETWORK,))
    redis = servers.Redis(root / "redis", args.redis_port, listen=args.address)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        postgres.start()
        if not postgres.has_database(DATABASE):
            postgres.create_database(DATABASE)
        # Redis last: the Tiltfile's readiness probe is a connection to it.
        redis.start()
        print(f"backends: postgresql://postgres@{args.address}:{args.database_port}/{DATABASE}", flush=True)
        print(f"backends: redis://{args.address}:{args.redis_port}/0 (data under {root})", flush=True)
        stop.wait()
    finally:
        redis.stop()
        postgres.stop()
        print("backends: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
