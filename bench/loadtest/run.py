"""`make loadtest`: a paced locust run against the API, judged against service/slo.toml.

    PYTHONPATH=bench uv run python -m loadtest [--rate 60] [--duration 2m] [--host URL --prometheus URL]

Without --host it targets the `make up` stack found in RUN_DIR (.run/): nginx
in front of the API pods, its Prometheus, its development key and database.
Steps, each printed as it happens:
1. seed: items to read (a bulk INSERT when the database is known, else through
   the API, which a key's write limit makes slow: pass --seed-items 0 to reuse
   what is there);
2. run locust headless at a constant rate (its own progress table on the console);
3. wait one scrape, then read the server's view of the run's window from Prometheus;
4. check that every job the run submitted ended (a job the queue lost fails the run);
5. judge each SLI on both views and write the report (HTML, Markdown, PNG
   charts, the charts' data as charts.json, JSON) to a new directory under
   --results (default .run/loadtest/).
With --record (`make loadtest RECORD=1`) the run also becomes the recorded one
the docs show: bench/results/loadtest.md and loadtest.json, and its charts and
charts.json in bench/results/loadtest/ (the only copy the pages link).
Exit status 0 when every SLI passes on both views and no job was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from loadtest import report
from loadtest.prometheus import Prometheus, PrometheusError
from loadtest.slis import ClientView, as_json, judge
from service import slo as slo_file

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TERMINAL_JOB_STATES = frozenset({"succeeded", "dead", "cancelled"})
SCRAPE_SETTLE_SECONDS = 7.0  # `make up` scrapes every 5 s: one more scrape after the last request


class LoadTestError(RuntimeError):
    """The run could not start or be judged; the message says which input or service."""


@dataclass(frozen=True)
class Target:
    host: str
    prometheus: str
    api_key: str
    database_url: str  # empty: seed through the API


def duration_seconds(text: str) -> int:
    """`90`, `90s`, `2m` or `1h` as whole seconds (a positive number)."""
    match = re.fullmatch(r"([0-9]+)([smh]?)", text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 2m or 1h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="the API's base URL (default: the `make up` stack in RUN_DIR)")
    parser.add_argument("--prometheus", help="Prometheus's base URL (default: the `make up` stack's)")
    parser.add_argument("--api-key", help="a key with items:write and jobs:write (default: RUN_DIR/api-key)")
    parser.add_argument("--database-url", help="seed with a bulk INSERT here (default: the `make up` stack's)")
    parser.add_argument("--rate", type=positive_float, default=60.0, help="offered requests per second (60)")
    parser.add_argument("--write-rate", type=positive_float, default=1.5, help="of which the API-key user's (1.5)")
    parser.add_argument("--duration", type=duration_seconds, default=120, help="how long: 90s, 2m, ... (2m)")
    parser.add_argument("--users", type=int, default=0, help="simulated shoppers (default: one per 5 req/s)")
    parser.add_argument("--seed-items", type=int, default=2000, help="items to add before the run (2000)")
    parser.add_argument("--results", type=Path, default=None, help="where report directories go (.run/loadtest)")
    parser.add_argument(
        "--record", action="store_true", help="also make this run the recorded one (bench/results/loadtest*)"
    )
    parser.add_argument(
        "--no-forwarded-for", action="store_true", help="do not give each shopper its own X-Forwarded-For address"
    )
    arguments = parser.parse_args(argv)
    if arguments.write_rate >= arguments.rate:
        parser.error("--write-rate must be below --rate (it is a part of it)")
    if arguments.users < 0 or arguments.seed_items < 0:
        parser.error("--users and --seed-items must be >= 0")
    return arguments


def resolve_target(arguments: argparse.Namespace) -> Target:
    """The URLs and key to use: the flags, else what `make up` recorded in RUN_DIR/stack.json."""
    run_dir = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
    stack: dict[str, Any] = {}
    if not (arguments.host and arguments.prometheus):
        try:
            stack = json.loads((run_dir / "stack.json").read_text())
        except FileNotFoundError:
            raise LoadTestError(
                f"no --host/--prometheus given and no `make up` stack in {run_dir}: run `make up` first"
            ) from None
    host = arguments.host or f"http://127.0.0.1:{stack['api_port']}"
    prometheus = arguments.prometheus or f"http://127.0.0.1:{stack['prometheus_port']}"
    key = arguments.api_key or os.environ.get("LOADTEST_API_KEY", "")
    if not key and (run_dir / "api-key").exists():
        key = (run_dir / "api-key").read_text().strip()
    if not key:
        raise LoadTestError("no API key: pass --api-key (a key with items:write and jobs:write) or LOADTEST_API_KEY")
    database_url = arguments.database_url or ("" if arguments.host else stack.get("database_url", ""))
    return Target(host.rstrip("/"), prometheus.rstrip("/"), key, database_url)


async def seed_database(database_url: str, count: int, run_id: str) -> list[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """
            INSERT INTO items (sku, name, category, price_cents, stock)
            SELECT $1 || '-' || n, 'Seeded item ' || n, (ARRAY['tools', 'garden', 'kitchen', 'toys'])[1 + n % 4],
                   100 + (n * 7919) % 50000, n % 500
            FROM generate_series(1, $2::int) AS n
            RETURNING id
            """,
            f"seed-{run_id}",
            count,
        )
    finally:
        await connection.close()
    return [int(row["id"]) for row in rows]


def _seed_through_api(target: Target, count: int, run_id: str) -> list[int]:
    ids: list[int] = []
    headers = {"Authorization": f"Bearer {target.api_key}"}
    with httpx.Client(base_url=target.host, headers=headers, timeout=10) as http:
        n = 0
        while len(ids) < count:
            body = {
                "sku": f"seed-{run_id}-{n}",
                "name": f"Seeded {n}",
                "category": "tools",
                "price_cents": 100,
                "stock": 1,
            }
            response = http.post("/v1/items", json=body)
            if response.status_code == 429:
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code != 201:
                raise LoadTestError(f"seeding through the API: POST /v1/items answered {response.status_code}")
            ids.append(int(response.json()["id"]))
            n += 1
    return ids


def seed(target: Target, count: int, run_id: str) -> list[int]:
    """Adds `count` items and returns their ids; with count 0, the ids of the first 2,000 items there are."""
    if count == 0:
        with httpx.Client(base_url=target.host, timeout=10) as http:
            ids: list[int] = []
            cursor = ""
            while len(ids) < 2000:
                page = http.get(f"/v1/items?limit=100{cursor}").json()
                ids += [int(item["id"]) for item in page["items"]]
                if not page["next_cursor"]:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            return ids
    if target.database_url:
        return asyncio.run(seed_database(target.database_url, count, run_id))
    print(f"loadtest: seeding {count} items through the API (no database URL; the write limit paces this)")
    return _seed_through_api(target, count, run_id)


def warm_up(target: Target, ids: list[int], run_id: str) -> None:
    """One request on every route the scenarios use, then one scrape, before the measured window opens.

    Prometheus's `increase` cannot count what a counter did before its first
    scrape, so a route series born inside the window would lose its first
    seconds of traffic; after this, every series the run touches exists.
    """
    auth = {"Authorization": f"Bearer {target.api_key}"}
    item = {"sku": f"warm-{run_id}", "name": "Warm-up", "category": "tools", "price_cents": 1, "stock": 1}
    with httpx.Client(base_url=target.host, timeout=30) as http:
        http.get("/v1/items?limit=1")
        http.get(f"/v1/items/{ids[0]}")
        http.get(f"/v1/items:batch?ids={ids[0]}")
        http.get("/v1/items/export.csv")
        created = http.post("/v1/items", json=item, headers=auth)
        if created.status_code == 201:
            http.patch(created.headers["location"], json={"stock": 2}, headers=auth)
        job = http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 0}}, headers=auth)
        if job.status_code == 202:
            http.get(job.headers["location"], headers=auth)
    time.sleep(SCRAPE_SETTLE_SECONDS)


def run_locust(target: Target, arguments: argparse.Namespace, directory: Path, ids: list[int]) -> tuple[float, float]:
    """Runs locust headless; returns the unix times of the run's first and last request window."""
    shoppers = arguments.users or max(2, math.ceil((arguments.rate - arguments.write_rate) / 5))
    ids_file = directory / "ids.json"
    ids_file.write_text(json.dumps(ids))
    env = os.environ | {
        "LOADTEST_READ_RATE": str(arguments.rate - arguments.write_rate),
        "LOADTEST_WRITE_RATE": str(arguments.write_rate),
        "LOADTEST_SHOPPERS": str(shoppers),
        "LOADTEST_API_KEY": target.api_key,
        "LOADTEST_IDS_FILE": str(ids_file),
        "LOADTEST_OUTCOME_FILE": str(directory / "outcome.json"),
        "LOADTEST_FORWARDED_FOR": "0" if arguments.no_forwarded_for else "1",
    }
    users = shoppers + 1  # the editor
    command = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("--host", target.host, "--users", str(users), "--spawn-rate", str(users)),
        *("--run-time", f"{arguments.duration}s", "--stop-timeout", "10"),
        *("--csv", str(directory / "locust"), "--csv-full-history", "--html", str(directory / "locust.html")),
        *("--loglevel", "WARNING", "--exit-code-on-error", "0"),
    ]
    print(
        f"loadtest: {users} users ({shoppers} shoppers + 1 editor), {arguments.rate:g} req/s for {arguments.duration} s"
    )
    start = time.time()
    completed = subprocess.run(command, env=env, check=False)
    end = time.time()
    if completed.returncode != 0:
        raise LoadTestError(f"locust exited with {completed.returncode}; see the lines above")
    return start, end


def check_jobs(target: Target, job_ids: list[str], within_seconds: float = 60) -> dict[str, int]:
    """Waits for every submitted job to end; counts final states ('lost' = missing, 'unfinished' = still running)."""
    headers = {"Authorization": f"Bearer {target.api_key}"}
    states: dict[str, str] = {}
    deadline = time.monotonic() + within_seconds
    with httpx.Client(base_url=target.host, headers=headers, timeout=10) as http:
        pending = list(job_ids)
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                response = http.get(f"/v1/jobs/{job_id}")
                if response.status_code == 404:
                    states[job_id] = "lost"
                elif response.status_code == 200:
                    states[job_id] = response.json()["state"]
                if states.get(job_id) in TERMINAL_JOB_STATES | {"lost"}:
                    pending.remove(job_id)
            if pending:
                time.sleep(0.5)
    counts: dict[str, int] = {}
    for job_id in job_ids:
        state = states.get(job_id, "unknown")
        state = state if state in TERMINAL_JOB_STATES | {"lost"} else "unfinished"
        counts[state] = counts.get(state, 0) + 1
    return counts


def client_view(directory: Path, start: float, end: float) -> tuple[ClientView, dict[str, int]]:
    outcome = json.loads((directory / "outcome.json").read_text())
    by_status: dict[str, int] = {}
    for row in outcome["statuses"]:
        by_status[str(row["status"])] = by_status.get(str(row["status"]), 0) + row["count"]
    total = sum(by_status.values())
    errors = sum(count for status, count in by_status.items() if status == "0" or int(status) >= 500)
    aggregate = next(
        (row for row in report.endpoint_rows(directory / "locust_stats.csv") if row[0] == "Aggregated"), None
    )

    def seconds(cell: str) -> float | None:
        try:
            return float(cell) / 1000
        except ValueError:
            return None

    view = ClientView(
        requests=total,
        errors=errors,
        rejected=by_status.get("429", 0),
        seconds=end - start,
        p50=seconds(aggregate[3]) if aggregate else None,
        p99=seconds(aggregate[4]) if aggregate else None,
    )
    return view, by_status


def locust_exceptions(path: Path) -> int:
    """How many times a scenario itself raised (locust logs and counts it; it is not a server error)."""
    if not path.exists():
        return 0
    with path.open(newline="") as file:
        return sum(int(row["Count"]) for row in csv.DictReader(file))


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    slo = slo_file.load()
    try:
        target = resolve_target(arguments)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        directory = (arguments.results or Path(os.environ.get("RUN_DIR", ROOT / ".run")) / "loadtest") / stamp
        directory.mkdir(parents=True)
        ids = seed(target, arguments.seed_items, stamp.lower())
        if not ids:
            raise LoadTestError("there are no items to read: pass --seed-items N")
        print(f"loadtest: {len(ids)} items to read; results in {directory}")
        warm_up(target, ids, stamp.lower())
        start, end = run_locust(target, arguments, directory, ids)
        client, by_status = client_view(directory, start, end)
        jobs = check_jobs(target, json.loads((directory / "outcome.json").read_text())["jobs"])
        time.sleep(max(0.0, end + SCRAPE_SETTLE_SECONDS - time.time()))
        prometheus = Prometheus(target.prometheus, slo_file.load_monitoring().api_job)
        try:
            server = prometheus.server_view(slo, start, end)
            verdicts = judge(slo, arguments.rate, server, client)
            history = report.ClientHistory.read(directory / "locust_stats_history.csv")
            chart_data = report.record(prometheus, slo, start, end, arguments.rate, history=history)
            (directory / report.CHART_DATA).write_text(json.dumps(chart_data) + "\n")
            charts = report.Charts(chart_data, directory).all()
        finally:
            prometheus.close()
    except (LoadTestError, PrometheusError, OSError, asyncpg.PostgresError, httpx.HTTPError) as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    lost = jobs.get("lost", 0) + jobs.get("unfinished", 0)
    crashes = locust_exceptions(directory / "locust_exceptions.csv")
    passed = all(v.passed for v in verdicts) and lost == 0 and crashes == 0
    facts = [
        ("target", target.host),
        ("window", f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} UTC, {end - start:.0f} s"),
        ("offered", f"{arguments.rate:g} req/s ({arguments.write_rate:g} from the API-key user)"),
        ("requests (client / server)", f"{client.requests} / {server.requests:.0f}"),
        ("responses by status (client)", ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items()))),
        ("429 (rate limited)", str(client.rejected)),
        ("jobs submitted and their end", ", ".join(f"{s}: {n}" for s, n in sorted(jobs.items())) or "none"),
        ("exceptions in the scenarios (a bug in locustfile.py when not 0)", str(crashes)),
        ("verdict", "PASS" if passed else "FAIL"),
    ]
    endpoints = [report.ENDPOINT_HEADER, *report.endpoint_rows(directory / "locust_stats.csv")]
    tables = {"Requests by name (client)": endpoints}
    title = "Load test"
    (directory / "report.md").write_text(report.markdown(title, facts, verdicts, tables))
    (directory / "report.html").write_text(report.html_page(title, facts, verdicts, tables, charts))
    summary = {
        "date": datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M"),
        "passed": passed,
        "offered_rps": arguments.rate,
        "start": start,
        "end": end,
        "server": asdict(server),
        "client": asdict(client),
        "statuses": by_status,
        "jobs": jobs,
        "verdicts": as_json(verdicts),
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print((directory / "report.md").read_text())
    print(f"loadtest: report {directory / 'report.html'}")
    if arguments.record:
        record(directory, charts, arguments)
    return 0 if passed else 1


RECORDED = ROOT / "bench" / "results"


def record(directory: Path, charts: list[str], arguments: argparse.Namespace) -> None:
    """Makes the run in `directory` the recorded one: its summary, its report with how it was run,
    and its charts with their data under bench/results/loadtest/ (replacing the previous run's)."""
    charts_dir = RECORDED / "loadtest"
    shutil.rmtree(charts_dir, ignore_errors=True)
    charts_dir.mkdir(parents=True)
    for name in [*charts, report.CHART_DATA]:
        shutil.copy(directory / name, charts_dir / name)
    shutil.copy(directory / "summary.json", RECORDED / "loadtest.json")
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    how = (
        f"Run with `make loadtest RECORD=1` (--rate {arguments.rate:g}, --duration {arguments.duration} s) "
        f"at commit {commit}, on a machine with {os.cpu_count()} CPUs."
    )
    embeds = "\n\n".join(f"![{Path(name).stem}](loadtest/{name})" for name in charts)
    text = (directory / "report.md").read_text().rstrip("\n")
    (RECORDED / "loadtest.md").write_text(f"{text}\n\n{how}\n\n## Charts\n\n{embeds}\n")
    shown = RECORDED.relative_to(ROOT) if RECORDED.is_relative_to(ROOT) else RECORDED
    print(f"loadtest: recorded in {shown}/loadtest.md, loadtest.json and loadtest/")
