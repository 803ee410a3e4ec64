"""Request-path benchmark: our API against its peers, side by side in one run.

Servers (each pinned to one core, wrk on the other, 32 connections):
  ours            gunicorn + 1 uvicorn worker, full middleware stack, production mode
                  (access log, request id, limits, budget, rate limiter, security headers)
  ours-no-cache   the same with CACHE_ENABLED=false
  ours-no-limit   the same with RATE_LIMIT_ENABLED=false (cache on and off)
  raw-asgi        the ceiling: bare ASGI + asyncpg, same queries, same bytes  (bench/peers)
  idiomatic       FastAPI with response_model and default serialisation       (bench/peers)
  trivial         FastAPI `return {"ok": True}`, no I/O: the floor              (bench/peers)

Scenarios:
  get-cold   GET /v1/items/{random id of 10,000}: every read goes to PostgreSQL when uncached
  get-hot    GET /v1/items/{random id of 100}: with the cache on, nearly all L1 hits
  list-100   GET /v1/items?limit=100

Each (server, scenario) runs ROUNDS times, interleaved; the median is reported.

    make bench       # or: uv run python bench/request_path.py [--rounds 3 --seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from typing import Any

import servers
from harness import RESULTS, ROOT, WrkResult, require_tools, seed, server, throwaway_backends, wrk

CONNECTIONS = 32
SCRIPT = ROOT / "bench" / "random_item.lua"
SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "get-cold": ("/", {"BENCH_MAX_ID": "10000"}),
    "get-hot": ("/", {"BENCH_MAX_ID": "100"}),
    "list-100": ("/v1/items?limit=100", {}),
}


def ours(extra: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    env = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": "benchmark-secret-key-0123456789abcdef0123",
        "LOG_LEVEL": "INFO",
        "DB_POOL_MIN_SIZE": "10",
        "DB_POOL_MAX_SIZE": "10",
        "RATE_LIMIT_READS": "1000000000/hour",  # counted on every request, never reached
        "METRICS_PORT": str(servers.free_port()),
        "SHUTDOWN_DRAIN_SECONDS": "0",
        # A worker recycle is an event (about a second without a worker), not steady-state cost.
        "MAX_REQUESTS": "0",
        **extra,
    }
    return [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"], env


def peer(name: str) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "uvicorn", f"bench.peers.{name}:app", "--no-access-log", "--log-level", "warning"]
    return command, {}


SERVERS: dict[str, tuple[tuple[list[str], dict[str, str]], list[str]]] = {
    "ours": (ours({}), ["get-cold", "get-hot", "list-100"]),
    "ours-no-cache": (ours({"CACHE_ENABLED": "false"}), ["get-cold", "get-hot"]),
    "ours-no-limit": (ours({"RATE_LIMIT_ENABLED": "false"}), ["get-hot"]),
    "ours-no-cache-no-limit": (ours({"CACHE_ENABLED": "false", "RATE_LIMIT_ENABLED": "false"}), ["get-cold"]),
    "raw-asgi": (peer("raw_asgi"), ["get-cold", "list-100"]),
    "idiomatic": (peer("idiomatic"), ["get-cold", "list-100"]),
    "trivial": (peer("trivial"), ["get-hot"]),
}

# (name, numerator, denominator, metric, target, higher is better)
TARGETS = [
    (
        "get item, cache off vs raw ASGI ceiling",
        ("ours-no-cache", "get-cold"),
        ("raw-asgi", "get-cold"),
        "rps",
        0.6,
        True,
    ),
    (
        "get item, cache off vs idiomatic FastAPI",
        ("ours-no-cache", "get-cold"),
        ("idiomatic", "get-cold"),
        "rps",
        1.0,
        True,
    ),
    ("get item, cache hit vs FastAPI trivial floor", ("ours", "get-hot"), ("trivial", "get-hot"), "rps", 0.85, True),
    ("get item, cache hit vs our cache off", ("ours", "get-hot"), ("ours-no-cache", "get-hot"), "rps", 2.0, True),
    ("list 100 vs raw ASGI ceiling", ("ours", "list-100"), ("raw-asgi", "list-100"), "rps", 0.7, True),
    ("list 100 vs idiomatic FastAPI", ("ours", "list-100"), ("idiomatic", "list-100"), "rps", 1.5, True),
    (
        "p99, rate limiter on vs off (cache off)",
        ("ours-no-cache", "get-cold"),
        ("ours-no-cache-no-limit", "get-cold"),
        "p99",
        1.2,
        False,
    ),
    ("p99, rate limiter on vs off (cache hit)", ("ours", "get-hot"), ("ours-no-limit", "get-hot"), "p99", 1.2, False),
]


def run(rounds: int, seconds: int) -> dict[tuple[str, str], list[WrkResult]]:
    results: dict[tuple[str, str], list[WrkResult]] = {}
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        for round_number in range(1, rounds + 1):
            for name, ((command, env), scenarios) in SERVERS.items():
                port = servers.free_port()
                full_env = {
                    **env,
                    "DATABASE_URL": backends.database_url,
                    "REDIS_URL": backends.redis_url,
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                }
                full_command = command if "gunicorn" in command else [*command, "--port", str(port)]
                with server(full_command, full_env, port):
                    for scenario in scenarios:
                        path, wrk_env = SCENARIOS[scenario]
                        url = f"http://127.0.0.1:{port}{path}"
                        script = SCRIPT if scenario.startswith("get") else None
                        wrk(url, seconds=2, connections=CONNECTIONS, script=script, env=wrk_env)  # warm-up
                        result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=script, env=wrk_env)
                        if result.errors:
                            raise RuntimeError(f"{name} {scenario}: {result.errors} errors or non-2xx responses")
                        results.setdefault((name, scenario), []).append(result)
                        print(
                            f"round {round_number} {name:24} {scenario:9} {result.requests_per_second:9.0f} req/s "
                            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                            flush=True,
                        )
    return results


def summarise(results: dict[tuple[str, str], list[WrkResult]], rounds: int, seconds: int) -> dict[str, Any]:
    medians = {
        key: {
            "rps": statistics.median(r.requests_per_second for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
        }
        for key, runs in results.items()
    }
    targets = []
    for name, numerator, denominator, metric, target, higher in TARGETS:
        ratio = medians[numerator][metric] / medians[denominator][metric]
        met = ratio >= target if higher else ratio <= target
        targets.append(
            {
                "name": name,
                "ratio": round(ratio, 3),
                "target": f"{'>=' if higher else '<='} {target}x",
                "met": met,
                "metric": metric,
            }
        )
    return {
        "benchmark": "request path",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores; server pinned to cpu 1, wrk to cpu 0; {CONNECTIONS} connections",
        "rounds": rounds,
        "seconds": seconds,
        "medians": [
            {"server": s, "scenario": sc, **{k: round(v, 2) for k, v in m.items()}} for (s, sc), m in medians.items()
        ],
        "runs": {f"{s} {sc}": [asdict(r) for r in runs] for (s, sc), runs in results.items()},
        "targets": targets,
    }


def write(summary: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "request_path.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Request path ({summary['date']})",
        "",
        summary["machine"] + f"; median of {summary['rounds']} interleaved rounds of {summary['seconds']} s.",
        "",
        "| target | ratio | wanted | met |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {t['name']} ({t['metric']}) | {t['ratio']} | {t['target']} | {'yes' if t['met'] else '**no**'} |"
        for t in summary["targets"]
    ]
    lines += ["", "| server | scenario | req/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {m['server']} | {m['scenario']} | {m['rps']:,.0f} | {m['p50']} | {m['p99']} |" for m in summary["medians"]
    ]
    lines += ["", "Rerun: `make bench` (or `uv run python bench/request_path.py --rounds 3 --seconds 5`).", ""]
    (RESULTS / "request_path.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    require_tools()
    summary = summarise(run(args.rounds, args.seconds), args.rounds, args.seconds)
    write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
