"""Request-path benchmark: our API against its peers, side by side in one run.

Servers (each pinned to one core, wrk on the other):
  ours                gunicorn + 1 uvicorn worker, every layer on, production mode (access log written,
                      request id, limits, budget, rate limiter, security headers, metrics; tracing off)
  ours-no-cache       the same with CACHE_ENABLED=false (every read goes to PostgreSQL)
  ours-no-limit       the same with RATE_LIMIT_ENABLED=false (cache on and off)
  ours-no-access-log  ACCESS_LOG_SAMPLE_RATE=0: fast successes get no access line
  ours-without-*      one middleware layer taken out (bench/peers/layers_off.py), for the cost table
  raw-asgi            the ceiling: bare ASGI + asyncpg, same queries, same bytes       (bench/peers)
  idiomatic           FastAPI with response_model and default serialisation            (bench/peers)
  trivial             FastAPI `return {"ok": True}`, no I/O: the floor                   (bench/peers)
  common-way          the same features, the common way: slowapi on Redis, prometheus-fastapi-
                      instrumentator, python-json-logger, response_model, a Redis cache (bench/peers)

Scenarios (the -1c variants use one connection: the latency a component adds):
  get-cold   GET /v1/items/{random id of 10,000}: every read goes to PostgreSQL when uncached
  get-hot    GET /v1/items/{random id of 100}: with the cache on, nearly all hits

Each (server, scenario) runs ROUNDS times, interleaved; the median is reported. The cost of a
layer is 1e6/rps(ours) - 1e6/rps(ours without it) on get-hot at 32 connections: the server is
CPU-bound on its one core there, so that is the layer's CPU time per request, in microseconds.

    make bench       # or: uv run python bench/request_path.py [--rounds 3 --seconds 5]
    uv run python bench/request_path.py --only ours,ours-no-limit --rounds 5    # the limiter's 1-connection target
    uv run python bench/request_path.py --profile-limiter --rounds 3            # what the limiter costs per request
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import Any

import psutil
from harness import (
    RESULTS,
    ROOT,
    WrkResult,
    measure,
    py_spy,
    require_tools,
    seed,
    server,
    servers,
    throwaway_backends,
    top_frames,
    wrk,
)

CONNECTIONS = 32
SCRIPT = ROOT / "bench" / "random_item.lua"
# name: (path, wrk environment, connections). The 1-connection runs measure the latency a
# component adds to one request; the 32-connection runs measure throughput (saturated).
SCENARIOS: dict[str, tuple[str, dict[str, str], int]] = {
    "get-cold": ("/", {"BENCH_MAX_ID": "10000"}, CONNECTIONS),
    "get-hot": ("/", {"BENCH_MAX_ID": "100"}, CONNECTIONS),
    "get-cold-1c": ("/", {"BENCH_MAX_ID": "10000"}, 1),
    "get-hot-1c": ("/", {"BENCH_MAX_ID": "100"}, 1),
}
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]


def ours(extra: dict[str, str], app: str | None = None) -> tuple[list[str], dict[str, str]]:
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
    return [*GUNICORN, *([app] if app else [])], env


def without(*layers: str) -> tuple[list[str], dict[str, str]]:
    return ours({"BENCH_LAYERS_OFF": ",".join(layers)}, "bench.peers.layers_off:create_app()")


def peer(name: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "uvicorn", f"bench.peers.{name}:app", "--no-access-log", "--log-level", "warning"]
    return command, env or {}


# Taken out one at a time for the cost table (bench/peers/layers_off.py names them).
LAYERS = {
    "request context and access log": "context",
    "HTTP metrics": "metrics",
    "request limits (414/431/413)": "limits",
    "rate limiter": "ratelimit",
    "time budget": "budget",
}
SERVERS: dict[str, tuple[tuple[list[str], dict[str, str]], list[str]]] = {
    "ours": (ours({}), ["get-hot", "get-hot-1c"]),
    "ours-no-cache": (ours({"CACHE_ENABLED": "false"}), ["get-cold", "get-cold-1c"]),
    "ours-no-limit": (ours({"RATE_LIMIT_ENABLED": "false"}), ["get-hot", "get-hot-1c"]),
    "ours-no-cache-no-limit": (
        ours({"CACHE_ENABLED": "false", "RATE_LIMIT_ENABLED": "false"}),
        ["get-cold", "get-cold-1c"],
    ),
    "ours-no-access-log": (ours({"ACCESS_LOG_SAMPLE_RATE": "0"}), ["get-hot"]),
    **{f"ours-without-{layer}": (without(layer), ["get-hot"]) for layer in LAYERS.values()},
    "ours-without-all": (without(*LAYERS.values()), ["get-hot"]),
    "raw-asgi": (peer("raw_asgi"), ["get-cold"]),
    "idiomatic": (peer("idiomatic"), ["get-cold"]),
    "trivial": (peer("trivial"), ["get-hot"]),
    "common-way": (peer("common_way"), ["get-hot"]),
    "common-way-no-cache": (peer("common_way", {"PEER_CACHE": "off"}), ["get-cold"]),
}


@dataclass(frozen=True)
class Target:
    name: str
    ours: tuple[str, str]  # (server, scenario)
    peer: tuple[str, str]
    metric: str  # "rps" (higher is better), "p50" or "p99" (lower is better)
    wanted: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.wanted if self.metric == "rps" else ratio <= self.wanted


TARGETS = [
    Target(
        "get item, cache hit, all features on / trivial FastAPI route",
        ("ours", "get-hot"),
        ("trivial", "get-hot"),
        "rps",
        0.6,
    ),
    Target(
        "get item, database path, all features on / idiomatic FastAPI",
        ("ours-no-cache", "get-cold"),
        ("idiomatic", "get-cold"),
        "rps",
        0.95,
    ),
    Target(
        "rate limiter on / off, 1 connection, cache hit",
        ("ours", "get-hot-1c"),
        ("ours-no-limit", "get-hot-1c"),
        "p50",
        1.15,
    ),
    Target(
        "rate limiter on / off, 1 connection, database path",
        ("ours-no-cache", "get-cold-1c"),
        ("ours-no-cache-no-limit", "get-cold-1c"),
        "p50",
        1.15,
    ),
    Target("ours / the common way, cache hit", ("ours", "get-hot"), ("common-way", "get-hot"), "rps", 1.5),
    Target(
        "ours / the common way, database path",
        ("ours-no-cache", "get-cold"),
        ("common-way-no-cache", "get-cold"),
        "rps",
        1.5,
    ),
    Target(
        "ours / the common way, cache hit, 32 connections", ("ours", "get-hot"), ("common-way", "get-hot"), "p99", 0.5
    ),
    Target(
        "ours / the common way, database path, 32 connections",
        ("ours-no-cache", "get-cold"),
        ("common-way-no-cache", "get-cold"),
        "p99",
        0.5,
    ),
    Target(
        "get item, database path / raw ASGI ceiling (issue 3)",
        ("ours-no-cache", "get-cold"),
        ("raw-asgi", "get-cold"),
        "rps",
        0.6,
    ),
]


def run(rounds: int, seconds: int, only: set[str] | None = None) -> dict[tuple[str, str], list[WrkResult]]:
    results: dict[tuple[str, str], list[WrkResult]] = {}
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        for round_number in range(1, rounds + 1):
            for name, ((command, env), scenarios) in SERVERS.items():
                if only is not None and name not in only:
                    continue
                port = servers.free_port()
                full_env = {**env, **backends.server_env(port)}
                full_command = command if "gunicorn" in command else [*command, "--port", str(port)]
                with server(full_command, full_env, port):
                    for scenario in scenarios:
                        path, wrk_env, connections = SCENARIOS[scenario]
                        url = f"http://127.0.0.1:{port}{path}"
                        script = SCRIPT if scenario.startswith("get") else None
                        result = measure(
                            f"{name} {scenario}",
                            url,
                            seconds=seconds,
                            connections=connections,
                            script=script,
                            env=wrk_env,
                            # A rare stall of the shared machine must not throw away the whole run;
                            # every error is counted in the report's table.
                            tolerated_error_share=0.001,
                        )
                        results.setdefault((name, scenario), []).append(result)
                        print(
                            f"round {round_number} {name:24} {scenario:9} {result.requests_per_second:9.0f} req/s "
                            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                            flush=True,
                        )
    return results


_METRICS = {"rps": "requests_per_second", "p50": "p50_ms", "p99": "p99_ms"}


def target_result(target: Target, results: dict[tuple[str, str], list[WrkResult]]) -> dict[str, Any]:
    """The target's ratio (of the two servers' medians: the claim) and the spread of its rounds.

    Each round's own ratio (ours / peer, the two measured minutes apart at most) is
    given as min / median / max: how far this shared machine moved the claim.
    """
    metric = _METRICS[target.metric]
    ours = [getattr(r, metric) for r in results[target.ours]]
    peer = [getattr(r, metric) for r in results[target.peer]]
    ratio = statistics.median(ours) / statistics.median(peer)
    per_round = [a / b for a, b in zip(ours, peer, strict=True)]
    return {
        "name": target.name,
        "metric": target.metric,
        "ratio": round(ratio, 3),
        "rounds": {
            "min": round(min(per_round), 3),
            "median": round(statistics.median(per_round), 3),
            "max": round(max(per_round), 3),
            "all": [round(r, 3) for r in per_round],
        },
        "target": f"{'>=' if target.metric == 'rps' else '<='} {target.wanted}x",
        "met": target.met(ratio),
    }


def summarise(results: dict[tuple[str, str], list[WrkResult]], rounds: int, seconds: int) -> dict[str, Any]:
    medians = {
        key: {
            "rps": statistics.median(r.requests_per_second for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
            "errors": sum(r.errors for r in runs),
        }
        for key, runs in results.items()
    }
    targets = [target_result(target, results) for target in TARGETS]
    base = medians[("ours", "get-hot")]["rps"]
    costs = [
        {
            "layer": label,
            "server": f"ours-without-{layer}",
            "rps_without": round(medians[(f"ours-without-{layer}", "get-hot")]["rps"], 1),
            "us_per_request": round(1e6 / base - 1e6 / medians[(f"ours-without-{layer}", "get-hot")]["rps"], 1),
        }
        for label, layer in [
            *LAYERS.items(),
            ("access line alone (ACCESS_LOG_SAMPLE_RATE=0)", "no-access-log"),
            ("all five layers", "all"),
        ]
        if (f"ours-without-{layer}", "get-hot") in medians
    ]
    if ("ours-no-access-log", "get-hot") in medians:
        rps = medians[("ours-no-access-log", "get-hot")]["rps"]
        costs.insert(
            len(LAYERS),
            {
                "layer": "access line alone (ACCESS_LOG_SAMPLE_RATE=0)",
                "server": "ours-no-access-log",
                "rps_without": round(rps, 1),
                "us_per_request": round(1e6 / base - 1e6 / rps, 1),
            },
        )
    return {
        "benchmark": "request path",
        "ours_get_hot_us_per_request": round(1e6 / base, 1),
        "costs": costs,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, shared with other work; server pinned to cpu 1, wrk to cpu 0; "
        f"{CONNECTIONS} connections unless the scenario ends in -1c (one)",
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
        "The ratio is of the two servers' medians; beside it, the lowest, median and highest of the "
        "rounds' own ratios (ours / peer within one round): the spread this shared machine gives the claim.",
        "",
        "| target | ratio | rounds: min | median | max | wanted | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {t['name']} ({t['metric']}) | {t['ratio']} | {t['rounds']['min']} | {t['rounds']['median']} "
        f"| {t['rounds']['max']} | {t['target']} | {'yes' if t['met'] else '**no**'} |"
        for t in summary["targets"]
    ]
    lines += [
        "",
        "What each layer costs: `ours` on get-hot (cache hits, 32 connections) is "
        f"{summary['ours_get_hot_us_per_request']} us of CPU per request; taking one layer out "
        "(bench/peers/layers_off.py) saves this much (1e6/rps with it - 1e6/rps without it; "
        "negative: within the noise). Tracing is off in every row (no endpoint): its hooks are a boolean check each.",
        "",
        "| layer taken out | req/s without it | us per request |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c['layer']} | {c['rps_without']:,.0f} | {c['us_per_request']} |" for c in summary["costs"]]
    lines += [
        "",
        f"| server | scenario | req/s | p50 ms | p99 ms | failed requests, all {summary['rounds']} rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m['server']} | {m['scenario']} | {m['rps']:,.0f} | {m['p50']} | {m['p99']} | {m['errors']:.0f} |"
        for m in summary["medians"]
    ]
    lines += ["", "Rerun: `make bench` (or `uv run python bench/request_path.py --rounds 3 --seconds 5`).", ""]
    (RESULTS / "request_path.md").write_text("\n".join(lines))
    print("\n".join(lines))


def profile(seconds: int) -> None:
    """Where our worker's time goes under each scenario: py-spy, summarised to Markdown."""
    lines = [
        f"# Where the time goes ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "py-spy samples of the `ours` worker (cache on, limiter on, access log on) under each scenario, "
        f"{seconds} s at 32 connections. Self time is the function itself; inclusive counts "
        "everything it called.",
        "",
    ]
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        (command, env), _ = SERVERS["ours"]
        port = servers.free_port()
        full_env = {**env, **backends.server_env(port)}
        with server(command, full_env, port) as process:
            [worker] = psutil.Process(process.pid).children()
            for scenario in ("get-hot", "get-cold"):
                path, wrk_env, _ = SCENARIOS[scenario]
                script = SCRIPT if scenario.startswith("get") else None
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url, seconds=2, connections=CONNECTIONS, script=script, env=wrk_env)
                with py_spy(worker.pid, seconds) as frames:
                    result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=script, env=wrk_env)
                lines += [f"## {scenario}: {result.requests_per_second:,.0f} req/s", "", *top_frames(frames), ""]
    (RESULTS / "request_path_profile.md").write_text("\n".join(lines))
    print("\n".join(lines))


def profile_limiter(seconds: int, rounds: int) -> None:
    """What the rate limiter costs one request on a cache hit at one connection: CPU and py-spy, with and without it.

    Per round, `ours` and `ours-no-limit` (fresh servers, which goes first alternating), each:
    the worker's CPU time per request over `seconds` at one connection, sampled by py-spy
    (`--gil`), and the share of those samples in the limiter's own work (its functions, not
    the app below its middleware). Printed, not recorded.
    """
    limiter = ("RateLimiter.", "Decision.", " _identity (", "RedisClock.", "Sample.bounds", "send_with_headers (")
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        for round_number in range(1, rounds + 1):
            # Which goes first alternates: a cost that follows the order, not the limiter, shows as such.
            for name in ("ours", "ours-no-limit") if round_number % 2 else ("ours-no-limit", "ours"):
                (command, env), _ = SERVERS[name]
                port = servers.free_port()
                with server(command, {**env, **backends.server_env(port)}, port) as process:
                    [worker] = psutil.Process(process.pid).children()
                    path, wrk_env, _ = SCENARIOS["get-hot-1c"]
                    url = f"http://127.0.0.1:{port}{path}"
                    wrk(url, seconds=2, connections=1, script=SCRIPT, env=wrk_env)
                    cpu = sum(worker.cpu_times()[:2])
                    with py_spy(worker.pid, seconds, gil=True) as frames:
                        result = wrk(url, seconds=seconds, connections=1, script=SCRIPT, env=wrk_env)
                    request_us = (sum(worker.cpu_times()[:2]) - cpu) * 1e6 / max(result.requests, 1)
                    stacks = [line.rpartition(" ") for line in frames.collapsed.splitlines()]
                    total = sum(int(n) for _, _, n in stacks) or 1
                    # The leaf-most limiter frame decides: below send_with_headers is the send itself.
                    in_limiter = sum(int(n) for stack, _, n in stacks if _limiter_leaf(stack, limiter)) / total
                    print(
                        f"round {round_number} {name:14} p50 {result.p50_ms:.3f} ms, worker CPU {request_us:.0f} "
                        f"us/request, of which rate limiter frames {in_limiter * request_us:.1f} us "
                        f"({100 * in_limiter:.1f} %)",
                        flush=True,
                    )
                    if round_number == 1 and name == "ours":
                        focus = ("service/ratelimit", "service/redisclock", "prometheus_client")
                        print("\n".join(top_frames(frames, 10, request_us=request_us, focus=focus)), flush=True)


def _limiter_leaf(stack: str, limiter: tuple[str, ...]) -> bool:
    """Whether a sample is the limiter's own work: in one of its functions (send_with_headers: its own line)."""
    frames = stack.split(";")
    for depth, frame in enumerate(frames):
        if any(marker in frame for marker in limiter):
            return "send_with_headers (" not in frame or depth == len(frames) - 1
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also record where our worker's time goes (py-spy)")
    parser.add_argument("--profile-only", action="store_true", help="only the py-spy profile")
    parser.add_argument(
        "--profile-limiter",
        action="store_true",
        help="only: the rate limiter's CPU and py-spy share per request, cache hit, one connection (printed)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated servers to run (printed with the targets they cover, nothing recorded): "
        "for trying a change quickly, e.g. --only ours,ours-no-limit for the limiter's cache-hit target",
    )
    args = parser.parse_args()
    require_tools()
    missing = [m for m in ("slowapi", "prometheus_fastapi_instrumentator", "pythonjsonlogger") if not find_spec(m)]
    if missing:
        raise SystemExit(f"the common-way peer needs {', '.join(missing)}: `uv sync --group bench` (make bench does)")
    if args.profile_limiter:
        profile_limiter(args.seconds, args.rounds)
        return 0
    if args.profile_only:
        profile(args.seconds)
        return 0
    if args.only:
        unknown = set(args.only.split(",")) - set(SERVERS)
        if unknown:
            parser.error(f"unknown servers: {', '.join(sorted(unknown))} (known: {', '.join(SERVERS)})")
        results = run(args.rounds, args.seconds, set(args.only.split(",")))
        for target in TARGETS:
            if target.ours in results and target.peer in results:
                t = target_result(target, results)
                spread = t["rounds"]
                print(
                    f"{t['name']} ({t['metric']}): {t['ratio']} (rounds: min {spread['min']}, median "
                    f"{spread['median']}, max {spread['max']}; wanted {t['target']}, met: {t['met']})"
                )
        return 0
    summary = summarise(run(args.rounds, args.seconds), args.rounds, args.seconds)
    write(summary)
    if args.profile or not all(target["met"] for target in summary["targets"]):
        profile(args.seconds)
    return 0 if all(target["met"] for target in summary["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
