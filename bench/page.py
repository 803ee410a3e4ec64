"""The benchmark page: bench/results/README.md, every ratio the benches wrote, with its command and date.

    uv run python bench/page.py          # `make bench` runs it last; tests/unit/test_bench_page.py checks it is current

Each benchmark writes its own `<name>.json` and `<name>.md` in bench/results/;
this page reads the JSON files only and writes one table, so it cannot say a
number the results do not hold. A benchmark whose results are missing is
listed as not run. The date of a run is the one its report states (its JSON's
`date`, or the heading of its Markdown report).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    scenario: str
    value: str  # a ratio ("0.98x") or, where the target is absolute, the number with its unit
    target: str  # "" when the benchmark states none
    met: bool | None  # None: no target


@dataclass(frozen=True)
class Bench:
    name: str
    results: str  # the stem of its files in bench/results
    command: str
    rows: Callable[[dict[str, Any]], Iterator[Row]]


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"


def _request_path(data: dict[str, Any]) -> Iterator[Row]:
    for target in data["targets"]:
        value = _x(target["ratio"])
        if "rounds" in target:  # the rounds' own lowest and highest ratio
            value += f" (rounds {_x(target['rounds']['min'])} to {_x(target['rounds']['max'])})"
        yield Row(target["name"], value, target["target"], target["met"])


def _token_auth(data: dict[str, Any]) -> Iterator[Row]:
    yield Row(
        "cache hit, CPU per request, access token / API key",
        _x(data["cost_ratio_token_over_key"]),
        data["target"],
        data["met"],
    )


def _cache_writes(data: dict[str, Any]) -> Iterator[Row]:
    for name, row in data["rows"].items():
        target = data["target"]
        if name == target["name"].split(",")[0]:
            yield Row(
                f"cache invalidation, {name}, median",
                f"{row['median_ms']:.2f} ms",
                f"< {target['ms']:g} ms",
                target["met"],
            )
        else:
            yield Row(f"cache invalidation, {name}, median", f"{row['median_ms']:.2f} ms", "", None)


def _jobs(data: dict[str, Any]) -> Iterator[Row]:
    queue, api = data["queue"], data["api_latency"]
    yield Row(
        "enqueue -> start, median, LISTEN/NOTIFY",
        f"{queue['notify_start_ms']['median']:.1f} ms",
        "< 25 ms",
        queue["notify_start_ms"]["median"] < 25,
    )
    yield Row(
        "no-op jobs/s, one worker with 2 slots",
        f"{queue['throughput_jobs_per_second']:.0f}/s",
        ">= 300/s",
        queue["throughput_jobs_per_second"] >= 300,
    )
    worker = api["p99_ms"]["worker"] / api["p99_ms"]["idle"]
    yield Row("GET item p99, worker running 200 ms jobs / idle", _x(worker), "<= 1.5x", worker <= 1.5)
    yield Row(
        "GET item p99, the same jobs inline in the API / idle (anti-example)",
        _x(api["p99_ms"]["inline"] / api["p99_ms"]["idle"]),
        "",
        None,
    )


def _observability(data: dict[str, Any]) -> Iterator[Row]:
    for item in data["comparisons"]:
        value = _x(item["rps_ratio"])
        if "rps_ratio_spread" in item:  # the rounds' lowest and highest ratio
            value += f" (rounds {_x(item['rps_ratio_spread']['min'])} to {_x(item['rps_ratio_spread']['max'])})"
        scenario = f"{item['comparison']} ({item['scenario']}), throughput"
        yield Row(scenario, value, item.get("target") or "", item.get("met"))
        if "cpu_ratio" in item:  # the same pair by worker CPU per request: what other work moves less
            spread = item["cpu_ratio_spread"]
            value = f"{_x(item['cpu_ratio'])} (rounds {_x(spread['min'])} to {_x(spread['max'])})"
            scenario = f"{item['comparison']} ({item['scenario']}), CPU per request"
            yield Row(scenario, value, item.get("target") or "", item.get("met_cpu"))


def _export_memory(data: dict[str, Any]) -> Iterator[Row]:
    yield Row(
        f"CSV export peak RSS, {data['rows_ratio']:g}x the rows", _x(data["peak_rss_ratio"]), "<= 1.1x", data["met"]
    )


def _scale(data: dict[str, Any]) -> Iterator[Row]:
    ratios = data["ratios"]
    yield Row(
        "list page 10,000 / page 1 on 1M rows, keyset, through the API",
        _x(ratios["keyset_api"]),
        "<= 1.2x",
        ratios["keyset_api"] <= 1.2,
    )
    yield Row("the same, keyset SQL", _x(ratios["keyset_sql"]), "<= 1.2x", ratios["keyset_sql"] <= 1.2)
    yield Row("the same, OFFSET SQL (anti-example)", _x(ratios["offset_sql"]), "", None)
    yield Row(
        f"job claim, {data['finished_jobs']:,} / 1,000 finished jobs",
        _x(ratios["claim"]),
        "<= 2x",
        ratios["claim"] <= 2,
    )


def _loadtest(data: dict[str, Any]) -> Iterator[Row]:
    for verdict in data["verdicts"]:
        passed = verdict["passed"]
        value = f"server {verdict['server_value']}; client {verdict['client_value']}"
        yield Row(f"load test, {data['offered_rps']:g} req/s: {verdict['sli']}", value, verdict["target"], passed)
    lost = data["jobs"].get("lost", 0) + data["jobs"].get("unfinished", 0)
    yield Row("load test: jobs lost", str(lost), "0", lost == 0)


def _drills(data: dict[str, Any]) -> Iterator[Row]:
    for drill in data["drills"]:
        failed = sum(drill["failed_by_status"].values())
        alerts = ", ".join(drill["alerts_fired"]) or "none"
        value = (
            f"{drill['jobs_lost']} jobs lost; {failed} of {drill['requests']} requests failed; "
            f"recovered {drill['recovery_seconds']:g} s after; alerts: {alerts}"
        )
        expected = ", ".join(drill["expected_alerts"]) or "none expected"
        yield Row(f"drill {drill['drill']}", value, f"0 jobs lost; alerts: {expected}", drill["passed"])


BENCHES = [
    Bench("Request path", "request_path", "uv run python bench/request_path.py", _request_path),
    Bench("Token vs API key", "token_auth", "uv run python bench/token_auth.py", _token_auth),
    Bench("Cache writes", "cache_writes", "uv run python bench/cache_writes.py", _cache_writes),
    Bench("Worker tier", "jobs", "uv run python bench/jobs.py", _jobs),
    Bench(
        "Observability overhead",
        "observability_overhead",
        "uv run python bench/observability_overhead.py",
        _observability,
    ),
    Bench("CSV export memory", "export_memory", "uv run python bench/export_memory.py", _export_memory),
    Bench("Scale", "scale", "uv run python bench/scale.py", _scale),
    Bench("Load test (make up)", "loadtest", "make up && make loadtest", _loadtest),
    Bench("Fault drills (make up)", "drills", "make up && make drill", _drills),
]


def _date(bench: Bench, data: dict[str, Any]) -> str:
    if "date" in data:
        return str(data["date"])
    report = RESULTS / f"{bench.results}.md"
    heading = report.read_text(encoding="utf-8").splitlines()[0] if report.exists() else ""
    match = re.search(r"\((\d{4}-\d{2}-\d{2}[^)]*)\)", heading)
    return match[1] if match else "unknown"


def render() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every ratio the benchmarks produce, from the JSON each one wrote here; made by `bench/page.py`",
        "(`make bench` runs every benchmark and then it). Ratios are measured side by side in one run on a",
        "shared 2-core machine: they are the claims, absolute numbers are context.",
        "",
        "| benchmark | scenario | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for bench in BENCHES:
        path = RESULTS / f"{bench.results}.json"
        if not path.exists():
            lines.append(f"| {bench.name} | not run | | | |")
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        link = f"[{bench.name}]({bench.results}.md)" if (RESULTS / f"{bench.results}.md").exists() else bench.name
        for row in bench.rows(data):
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            lines.append(f"| {link} | {row.scenario} | {row.value} | {row.target} | {met} |")
        notes.append(f"- {bench.name}: `{bench.command}`, run {_date(bench, data)}")
    return "\n".join([*lines, "", "## Commands and dates", "", *notes, ""])


def main() -> int:
    (RESULTS / "README.md").write_text(render(), encoding="utf-8")
    print(f"wrote {RESULTS / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
