"""CSV export memory: does the API worker's RSS stay flat as the table grows?

Starts throwaway PostgreSQL and Redis (from the system binaries), applies the
migrations, runs the API exactly as a pod does (gunicorn + one uvicorn worker),
then for each table size seeds the items table and streams /v1/items/export.csv
while sampling the worker's RSS every 5 ms. Sizes run in one process, one after
the other, so the numbers are comparable; the result that matters is the ratio
of peak RSS growth at the largest size to the smallest.

    make bench            # or: uv run python bench/export_memory.py [--sizes 50000,500000]

Writes bench/results/export_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import httpx
import psutil
from harness import RESULTS, seed, server, servers, throwaway_backends


class RssSampler:
    """Peak RSS of one process, sampled on a thread while the export streams."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def export(url: str, worker_pid: int) -> dict[str, float]:
    before = psutil.Process(worker_pid).memory_info().rss
    lines = 0
    size = 0
    started = time.perf_counter()
    with RssSampler(worker_pid) as sampler, httpx.stream("GET", f"{url}/v1/items/export.csv", timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
            size += len(chunk)
    elapsed = time.perf_counter() - started
    return {
        "rows": lines - 1,
        "bytes": size,
        "seconds": round(elapsed, 3),
        "rows_per_second": round((lines - 1) / elapsed),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_peak_mib": round(sampler.peak / 2**20, 1),
        "rss_growth_mib": round((sampler.peak - before) / 2**20, 1),
    }


def write_results(runs: list[dict[str, float]]) -> bool:
    smallest, largest = runs[0], runs[-1]
    summary: dict[str, object] = {
        "benchmark": "csv export memory",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB",
        "runs": runs,
        "rows_ratio": round(largest["rows"] / smallest["rows"], 1),
        "peak_rss_ratio": round(largest["rss_peak_mib"] / smallest["rss_peak_mib"], 3),
        "target": "peak RSS flat as rows grow: peak_rss_ratio <= 1.10",
    }
    met = float(summary["peak_rss_ratio"]) <= 1.10  # type: ignore[arg-type]
    summary["met"] = met
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export_memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = [
        "| rows | MiB sent | seconds | rows/s | worker RSS before (MiB) | peak (MiB) | growth (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['rows']:,.0f} | {r['bytes'] / 2**20:.1f} | {r['seconds']} | {r['rows_per_second']:,.0f} | "
        f"{r['rss_before_mib']} | {r['rss_peak_mib']} | {r['rss_growth_mib']} |"
        for r in runs
    ]
    (RESULTS / "export_memory.md").write_text(
        f"# CSV export memory ({summary['date']}, {summary['machine']})\n\n"
        + "\n".join(table)
        + f"\n\n{summary['rows_ratio']}x the rows -> peak RSS x{summary['peak_rss_ratio']} "
        f"({'met' if met else 'NOT met'}: {summary['target']}).\n\n"
        "Rerun: `make bench` (or `uv run python bench/export_memory.py --sizes 50000,500000`).\n"
    )
    print((RESULTS / "export_memory.md").read_text())
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="50000,500000", help="comma-separated table sizes")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    runs = []
    with throwaway_backends() as backends:
        seed(backends.database_url, sizes[0])
        port = servers.free_port()
        env = {
            **backends.server_env(port),
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "WARNING",
            "METRICS_PORT": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0",
        }
        command = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]
        with server(command, env, port, pin=False) as process:
            [worker] = psutil.Process(process.pid).children()
            url = f"http://127.0.0.1:{port}"
            for index, rows in enumerate(sizes):
                if index:
                    seed(backends.database_url, rows)
                else:
                    export(url, worker.pid)  # warm-up: first-use allocations are not the export's cost
                result = export(url, worker.pid)
                assert result["rows"] == rows, result
                runs.append(result)
                print(json.dumps(result))
    return 0 if write_results(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
