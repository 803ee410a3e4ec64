"""What observability costs on the request path: the HTTP metrics middleware, and tracing.

Servers (gunicorn + 1 uvicorn worker, production mode, pinned to cpu 1; wrk on cpu 0):
  ours                  as shipped: metrics middleware on, no OTLP endpoint (tracing off)
  no-http-metrics       the same app without HttpMetricsMiddleware        (bench/peers/observability_off.py)
  ours-again            `ours` once more: the A/A pair shows this machine's noise floor
  tracing-all           OTLP endpoint set (a null receiver in this process), every request sampled
  tracing-1pct          OTLP endpoint set, parentbased_traceidratio 0.01
  <name>@baseline       with --baseline DIR: ours, tracing-all and tracing-1pct run from another
                        checkout (a commit before a change), in the same rounds

Scenarios: get-hot (cache hits: where fixed per-request costs show most) and
get-cold (PostgreSQL on every read), 32 connections. Every server is up at once
and idle but for its turn; each round gives each server a short turn under load
per scenario (every other round in reverse order), so the two sides of a ratio
run seconds apart, not minutes. A ratio is taken
within each round (ours / peer); the claim is the median of the rounds, reported
with the lowest and highest. Two ratios: throughput (req/s), and CPU (the peer's
worker CPU time per request / ours: the throughput ratio with a core to each,
which other work on the shared machine moves far less). Targets (issue 25):
tracing at 1 % sampling keeps at least 0.95x of tracing off, every request
sampled 0.85x.

    make bench     # or: uv run python bench/observability_overhead.py [--rounds 12 --seconds 2]
    uv run python bench/observability_overhead.py --profile-only     # py-spy: where the time goes
    uv run python bench/observability_overhead.py --only ours,tracing-1pct --scenario get-hot --rounds 3
    git worktree add /tmp/before <commit> && uv run python bench/observability_overhead.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from harness import (
    LOAD_CPU,
    RESULTS,
    ROOT,
    Backends,
    Profile,
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

SCRIPT = ROOT / "bench" / "random_item.lua"
SCENARIOS = {"get-hot": {"BENCH_MAX_ID": "100"}, "get-cold": {"BENCH_MAX_ID": "10000"}}
CONNECTIONS = 32
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]


class NullCollector:
    """Accepts OTLP/HTTP exports and throws them away, counting bytes (proof that spans were sent)."""

    def __init__(self) -> None:
        self.received_bytes = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                collector.received_bytes += len(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        # On the load generator's core (this thread only): receiving spans is the collector's
        # work, not the server's, and must not take the server's core from it.
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        self.server.serve_forever()


@dataclass(frozen=True)
class ServerUnderTest:
    command: list[str]
    env: dict[str, str]
    checkout: Path = ROOT  # whose `service` it runs: this one, or the --baseline checkout


def servers_under_test(collector: NullCollector, baseline: Path | None = None) -> dict[str, ServerUnderTest]:
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
    one_percent = {**otlp, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    under_test = {
        "ours": ServerUnderTest(GUNICORN, {}),
        "no-http-metrics": ServerUnderTest([*GUNICORN, "bench.peers.observability_off:without_http_metrics()"], {}),
        "ours-again": ServerUnderTest(GUNICORN, {}),
        "tracing-all": ServerUnderTest(GUNICORN, otlp),
        "tracing-1pct": ServerUnderTest(GUNICORN, one_percent),
    }
    if baseline is not None:  # the same three settings on another commit, in the same rounds
        for name in ("ours", "tracing-all", "tracing-1pct"):
            under_test[f"{name}@baseline"] = ServerUnderTest(GUNICORN, under_test[name].env, baseline)
    return under_test


@dataclass(frozen=True)
class Comparison:
    title: str
    ours: str
    peer: str
    wanted: float | None  # the lowest throughput ratio (ours / peer) the issue accepts; None: no target


COMPARISONS = [
    Comparison("HTTP metrics middleware: on / off", "ours", "no-http-metrics", None),
    Comparison("noise floor: ours / the same server again (A/A)", "ours", "ours-again", None),
    # A sampled-out request should cost a boolean check and context propagation (issue 25).
    Comparison("tracing on, 1 % sampled / off", "tracing-1pct", "ours", 0.95),
    Comparison("tracing on, every request sampled / off", "tracing-all", "ours", 0.85),
    # With --baseline: the same two on the baseline commit (before a change), measured in the same rounds.
    Comparison("baseline: tracing on, 1 % sampled / off", "tracing-1pct@baseline", "ours@baseline", 0.95),
    Comparison("baseline: tracing on, every request sampled / off", "tracing-all@baseline", "ours@baseline", 0.85),
]
Results = dict[tuple[str, str], list[WrkResult]]


def run(
    rounds: int,
    seconds: int,
    only: set[str] | None = None,
    scenarios: set[str] | None = None,
    baseline: Path | None = None,
) -> tuple[Results, int]:
    """Every server up at once (each pinned to the server core, idle but for its turn); then, per round,
    each server takes its turn under load, one short run per scenario.

    Short turns, all servers up: neighbours in a round are seconds apart, so what other work
    does to this shared machine touches both sides of a ratio alike (a server restarted for
    each of its turns had minutes between it and its peer).
    """
    collector = NullCollector()
    results: Results = {}
    picked = {**SCENARIOS} if scenarios is None else {name: SCENARIOS[name] for name in scenarios}
    with throwaway_backends() as backends, contextlib.ExitStack() as stack:
        seed(backends.database_url, 10_000)
        running = []
        for name, spec in servers_under_test(collector, baseline).items():
            if only is not None and name not in only:
                continue
            port = servers.free_port()
            env = {**server_env(backends, port), **spec.env}
            process = stack.enter_context(server(spec.command, env, port, cwd=spec.checkout))
            [worker] = psutil.Process(process.pid).children()
            running.append((name, f"http://127.0.0.1:{port}/", worker))
        for _, url, _ in running:  # warm: caches filled, pools opened, code paths run once
            for wrk_env in picked.values():
                wrk(url, seconds=2, connections=CONNECTIONS, script=SCRIPT, env=wrk_env)
        for round_number in range(1, rounds + 1):
            # Every other round in reverse: a machine that slows down (or speeds up) across a
            # round then favours no server.
            for name, url, worker in running if round_number % 2 else reversed(running):
                for scenario, wrk_env in picked.items():
                    result = measure(
                        f"{name} {scenario}",
                        url,
                        seconds=seconds,
                        connections=CONNECTIONS,
                        script=SCRIPT,
                        env=wrk_env,
                        warmup_seconds=0,
                        cpu_of=worker,
                    )
                    results.setdefault((name, scenario), []).append(result)
                    print(
                        f"round {round_number} {name:21} {scenario:8} {result.requests_per_second:7.0f} req/s "
                        f"p50 {result.p50_ms:6.2f} ms  CPU {result.cpu_us_per_request or 0:6.0f} us/request",
                        flush=True,
                    )
    return results, collector.received_bytes


def server_env(backends: Backends, port: int) -> dict[str, str]:
    return {
        **backends.server_env(port),
        "ENVIRONMENT": "production",
        "SECRET_KEY": "benchmark-secret-key-0123456789abcdef0123",
        "RATE_LIMIT_READS": "1000000000/hour",
        "METRICS_PORT": str(servers.free_port()),
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "MAX_REQUESTS": "0",
        "DB_POOL_MIN_SIZE": "10",
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def compare(results: Results) -> list[dict[str, Any]]:
    """Per comparison and scenario: two ratios per round (ours / peer in that round), each with its spread.

    - throughput: req/s of ours / req/s of the peer (the issue's measure);
    - CPU: the peer's worker CPU per request / ours (the throughput ratio the two would
      have with a core each to themselves: what a request costs, whatever share of its
      core this shared machine left each server in its turn).
    The claim is the median of the per-round ratios: each round's two servers ran
    minutes apart at most, so a slow spell of the shared machine touches both.
    """
    comparisons = []
    for item in COMPARISONS:
        for scenario in SCENARIOS:
            ours, peer = results.get((item.ours, scenario)), results.get((item.peer, scenario))
            if not ours or not peer:
                continue
            pairs = list(zip(ours, peer, strict=True))
            throughput = spread([a.requests_per_second / b.requests_per_second for a, b in pairs])
            cpu = spread([(b.cpu_us_per_request or 0) / (a.cpu_us_per_request or 1) for a, b in pairs])
            comparisons.append(
                {
                    "comparison": item.title,
                    "scenario": scenario,
                    "rps_ratio": throughput["median"],
                    "rps_ratio_spread": throughput,
                    "cpu_ratio": cpu["median"],
                    "cpu_ratio_spread": cpu,
                    "p50_ratio": statistics.median(a.p50_ms / b.p50_ms for a, b in pairs),
                    "target": None if item.wanted is None else f">= {item.wanted}x",
                    "met": None if item.wanted is None else throughput["median"] >= item.wanted,
                    "met_cpu": None if item.wanted is None else cpu["median"] >= item.wanted,
                }
            )
    return comparisons


def report(results: Results, exported: int, rounds: int, seconds: int, baseline: str | None = None) -> bool:
    """Write observability_overhead.{md,json}; whether every target was met."""
    medians = {
        key: {
            "rps": statistics.median(r.requests_per_second for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
            "cpu_us": statistics.median(r.cpu_us_per_request or 0 for r in runs),
        }
        for key, runs in results.items()
    }
    comparisons = compare(results)
    date = time.strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Observability overhead ({date})",
        "",
        f"2 cores, shared with other work; servers pinned to cpu 1 (all up at once, each loaded in its turn), "
        f"wrk and the null OTLP collector to cpu 0; {CONNECTIONS} connections; {rounds} rounds, each server "
        f"{seconds} s per scenario per round (every other round in reverse order). A ratio is ours / peer "
        "in the same round; the claim is the median of the rounds, with the "
        "lowest and highest beside it. Throughput is the issue's measure; the CPU ratio (the peer's worker CPU "
        "per request / ours) is the throughput ratio the two would have with a core each to themselves, and "
        "moves far less when other work takes the server's core. `@baseline` servers run another commit "
        "(`--baseline DIR`: before a change), in the same rounds. Tracing off (no endpoint) is `ours`. "
        + (f"Baseline here: {baseline}. " if baseline else "")
        + "Where the time goes: "
        "[observability_overhead_profile.md](observability_overhead_profile.md) (`--profile`).",
        "",
        "| comparison | scenario | throughput ratio (median) | min | max | CPU ratio (median) | min | max "
        "| target | met (throughput) | met (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]

    def verdict(met: bool | None) -> str:
        return "" if met is None else ("yes" if met else "**no**")

    for c in comparisons:
        t, u = c["rps_ratio_spread"], c["cpu_ratio_spread"]
        lines.append(
            f"| {c['comparison']} | {c['scenario']} | {t['median']:.3f} | {t['min']:.3f} | {t['max']:.3f} "
            f"| {u['median']:.3f} | {u['min']:.3f} | {u['max']:.3f} | {c['target'] or ''} | {verdict(c['met'])} "
            f"| {verdict(c['met_cpu'])} |"
        )
    lines += [
        "",
        "| server | scenario | req/s | p50 ms | p99 ms | worker CPU us/request |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {scenario} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.0f} |"
        for (name, scenario), m in medians.items()
    ]
    lines += [
        "",
        f"The null collector received {exported:,} bytes of OTLP (spans were really exported).",
        "",
        f"Rerun: `uv run python bench/observability_overhead.py --rounds {rounds} --seconds {seconds}"
        + (" --baseline <a checkout of the baseline commit>" if baseline else "")
        + "`.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "observability_overhead.md").write_text("\n".join(lines))
    summary: dict[str, Any] = {
        "date": date,
        "rounds": rounds,
        "seconds": seconds,
        "medians": [{"server": s, "scenario": sc, **m} for (s, sc), m in medians.items()],
        "comparisons": comparisons,
        "exported_bytes": exported,
    }
    (RESULTS / "observability_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    return all(c["met"] is not False for c in comparisons)


# Frames that are tracing's work: our hooks' module and the SDK (spans, sampling, context, export).
_TRACING_FRAMES = ("service/tracing.py", "opentelemetry/")


def tracing_samples(profile: Profile) -> float:
    """The share of `profile`'s samples with a tracing frame anywhere on the stack (each sample once)."""
    total = traced = 0
    for line in profile.collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        total += int(samples)
        if any(marker in stack for marker in ("/service/tracing.py:", "/site-packages/opentelemetry/")):
            traced += int(samples)
    return traced / total if total else 0.0


def profile(seconds: int, baseline: Path | None = None, scenarios: set[str] | None = None) -> None:
    """Where each tracing setting's worker spends its time, per scenario: py-spy, summarised to Markdown."""
    collector = NullCollector()
    picked = [name for name in SCENARIOS if scenarios is None or name in scenarios]
    summary = [
        "| server | scenario | req/s | worker CPU us/request | of which tracing (share of samples) |",
        "|---|---|---:|---:|---:|",
    ]
    sections: list[str] = []
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        for scenario in picked:
            env = SCENARIOS[scenario]
            for name, spec in servers_under_test(collector, baseline).items():
                if name.split("@")[0] not in ("ours", "tracing-1pct", "tracing-all"):
                    continue
                port = servers.free_port()
                environment = {**server_env(backends, port), **spec.env}
                with server(spec.command, environment, port, cwd=spec.checkout) as process:
                    [worker] = psutil.Process(process.pid).children()
                    url = f"http://127.0.0.1:{port}/"
                    wrk(url, seconds=2, connections=CONNECTIONS, script=SCRIPT, env=env)
                    cpu = sum(worker.cpu_times()[:2])
                    with py_spy(worker.pid, seconds, gil=True) as frames:
                        result = wrk(url, seconds=seconds, connections=CONNECTIONS, script=SCRIPT, env=env)
                    request_us = (sum(worker.cpu_times()[:2]) - cpu) * 1e6 / max(result.requests, 1)
                    traced = tracing_samples(frames)
                    summary.append(
                        f"| {name} | {scenario} | {result.requests_per_second:,.0f} | {request_us:.0f} "
                        f"| {traced * request_us:.0f} us ({100 * traced:.1f} %) |"
                    )
                    sections += [
                        f"## {name}, {scenario}: {result.requests_per_second:,.0f} req/s, "
                        f"worker CPU {request_us:.0f} us per request",
                        "",
                        *top_frames(frames, request_us=request_us, focus=("opentelemetry/", "service/")),
                        "",
                    ]
    lines = [
        f"# Where tracing's time goes ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "py-spy samples (`--gil`: the thread doing Python work) of the worker of each server under "
        f"{' and '.join(picked)} (get-hot: cache hits; get-cold: a Redis miss and a PostgreSQL read), "
        f"{seconds} s at {CONNECTIONS} connections after a warm-up, one server after another. "
        "A function's share of the samples times the worker's CPU time per request is its CPU microseconds "
        'per request (the us/request column). "Of which tracing": samples with a frame of '
        f"{' or '.join(f'`{f}`' for f in _TRACING_FRAMES)} on the stack (the span exporter's thread included). "
        "`@baseline`: the same server on the --baseline checkout (before a change). Self time is the function "
        "itself; inclusive counts everything it called. Rerun: "
        "`uv run python bench/observability_overhead.py --profile-only [--scenario S] [--baseline DIR]`.",
        "",
        *summary,
        "",
        *sections,
    ]
    (RESULTS / "observability_overhead_profile.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also record where each worker's time goes (py-spy)")
    parser.add_argument("--profile-only", action="store_true", help="only the py-spy profile")
    parser.add_argument("--profile-seconds", type=int, default=8, help="py-spy's sampling time per server")
    parser.add_argument("--only", help="comma-separated servers (printed, nothing recorded): for trying a change")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="one scenario (with --only or --profile-only)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/before HEAD~3`) whose ours/tracing servers run in the "
        "same rounds: before and after a change, side by side",
    )
    parser.add_argument("--baseline-name", help="what the baseline checkout is, for the report (e.g. its commit)")
    args = parser.parse_args()
    require_tools()
    if args.profile_only:
        profile(args.profile_seconds, args.baseline, {args.scenario} if args.scenario else None)
        return 0
    if args.only:
        only = set(args.only.split(","))
        results, _ = run(args.rounds, args.seconds, only, {args.scenario} if args.scenario else None, args.baseline)
        for c in compare(results):
            t, u = c["rps_ratio_spread"], c["cpu_ratio_spread"]
            print(
                f"{c['comparison']} {c['scenario']}: throughput {t['median']:.3f} (min {t['min']:.3f}, "
                f"max {t['max']:.3f}); CPU {u['median']:.3f} (min {u['min']:.3f}, max {u['max']:.3f})"
            )
        return 0
    results, exported = run(args.rounds, args.seconds, baseline=args.baseline)
    baseline = None if args.baseline is None else (args.baseline_name or str(args.baseline))
    met = report(results, exported, args.rounds, args.seconds, baseline)
    if args.profile:
        profile(args.profile_seconds, args.baseline)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
