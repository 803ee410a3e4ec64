"""What observability costs on the request path: the HTTP metrics middleware, and tracing.

Servers (gunicorn + 1 uvicorn worker, production mode, pinned to cpu 1; wrk on cpu 0):
  ours                  as shipped: metrics middleware on, no OTLP endpoint (tracing off)
  no-http-metrics       the same app without HttpMetricsMiddleware        (bench/peers/observability_off.py)
  ours-again            `ours` once more: the A/A pair shows this machine's noise floor
  tracing-all           OTLP endpoint set (a null receiver in this process), every request sampled
  tracing-1pct          OTLP endpoint set, parentbased_traceidratio 0.01

Scenarios: get-hot (cache hits: where fixed per-request costs show most) and
get-cold (PostgreSQL on every read), 32 connections; each (server, scenario)
ROUNDS times, interleaved; medians reported as ratios.

    make bench     # or: uv run python bench/observability_overhead.py [--rounds 3 --seconds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import RESULTS, ROOT, WrkResult, measure, require_tools, seed, server, servers, throwaway_backends

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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def servers_under_test(collector: NullCollector) -> dict[str, tuple[list[str], dict[str, str]]]:
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
    return {
        "ours": (GUNICORN, {}),
        "no-http-metrics": ([*GUNICORN, "bench.peers.observability_off:without_http_metrics()"], {}),
        "ours-again": (GUNICORN, {}),
        "tracing-all": (GUNICORN, otlp),
        "tracing-1pct": (
            GUNICORN,
            {**otlp, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
        ),
    }


COMPARISONS = [
    ("HTTP metrics middleware: on / off", "ours", "no-http-metrics"),
    ("noise floor: ours / the same server again (A/A)", "ours", "ours-again"),
    ("tracing on, every request sampled / off", "tracing-all", "ours"),
    ("tracing on, 1 % sampled / off", "tracing-1pct", "ours"),
]


def run(rounds: int, seconds: int) -> tuple[dict[tuple[str, str], list[WrkResult]], int]:
    collector = NullCollector()
    results: dict[tuple[str, str], list[WrkResult]] = {}
    with throwaway_backends() as backends:
        seed(backends.database_url, 10_000)
        for round_number in range(1, rounds + 1):
            for name, (command, extra) in servers_under_test(collector).items():
                port = servers.free_port()
                env = {
                    **backends.server_env(port),
                    "ENVIRONMENT": "production",
                    "SECRET_KEY": "benchmark-secret-key-0123456789abcdef0123",
                    "RATE_LIMIT_READS": "1000000000/hour",
                    "METRICS_PORT": str(servers.free_port()),
                    "SHUTDOWN_DRAIN_SECONDS": "0",
                    "MAX_REQUESTS": "0",
                    "DB_POOL_MIN_SIZE": "10",
                    **extra,
                }
                with server(command, env, port):
                    for scenario, wrk_env in SCENARIOS.items():
                        url = f"http://127.0.0.1:{port}/"
                        result = measure(
                            f"{name} {scenario}",
                            url,
                            seconds=seconds,
                            connections=CONNECTIONS,
                            script=SCRIPT,
                            env=wrk_env,
                        )
                        results.setdefault((name, scenario), []).append(result)
                        print(
                            f"round {round_number} {name:21} {scenario:8} {result.requests_per_second:7.0f} req/s "
                            f"p50 {result.p50_ms:6.2f} ms",
                            flush=True,
                        )
    return results, collector.received_bytes


def report(results: dict[tuple[str, str], list[WrkResult]], exported: int, rounds: int, seconds: int) -> None:
    medians = {
        key: {
            "rps": statistics.median(r.requests_per_second for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
        }
        for key, runs in results.items()
    }
    lines = [
        f"# Observability overhead ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"2 cores; server pinned to cpu 1, wrk to cpu 0; {CONNECTIONS} connections; median of {rounds} "
        f"interleaved rounds of {seconds} s. No targets: the issue asks for the numbers. Tracing off "
        "(no endpoint) is `ours`: every hook is one boolean check, below the A/A noise floor.",
        "",
        "| comparison | scenario | throughput ratio | p50 ratio |",
        "|---|---|---:|---:|",
    ]
    comparisons = []
    for title, ours, peer in COMPARISONS:
        for scenario in SCENARIOS:
            rps = medians[(ours, scenario)]["rps"] / medians[(peer, scenario)]["rps"]
            p50 = medians[(ours, scenario)]["p50"] / medians[(peer, scenario)]["p50"]
            comparisons.append({"comparison": title, "scenario": scenario, "rps_ratio": rps, "p50_ratio": p50})
            lines.append(f"| {title} | {scenario} | {rps:.3f} | {p50:.3f} |")
    lines += ["", "| server | scenario | req/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {scenario} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} |"
        for (name, scenario), m in medians.items()
    ]
    lines += ["", f"The null collector received {exported:,} bytes of OTLP (spans were really exported).", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "observability_overhead.md").write_text("\n".join(lines))
    summary: dict[str, Any] = {
        "medians": [{"server": s, "scenario": sc, **m} for (s, sc), m in medians.items()],
        "comparisons": comparisons,
        "exported_bytes": exported,
    }
    (RESULTS / "observability_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    require_tools()
    results, exported = run(args.rounds, args.seconds)
    report(results, exported, args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
