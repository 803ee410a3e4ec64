"""The load test's report: PNG charts, an HTML page that shows them, and a Markdown summary.

Charts put the server's series (Prometheus) and the client's (locust's
per-second history) on the same axes, with the SLO's target and alert lines
from service/slo.toml, so a reader sees at once where the run stood against
what the alerts would have said.
"""

from __future__ import annotations

import csv
import html
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display here or in CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter, ScalarFormatter

from loadtest.prometheus import HISTOGRAM, Prometheus, Series
from loadtest.slis import Verdict
from service.slo import Slo

STEP = 5.0  # seconds between chart points: the scrape interval of `make up`'s Prometheus
RATE_WINDOW = "20s"  # four scrapes per rate() point


@dataclass
class ClientHistory:
    """locust's per-second `Aggregated` rows: unix time, requests/s, failures/s, p50 and p99 (seconds)."""

    times: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> ClientHistory:
        history = cls()
        if not path.exists():
            return history
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                if row.get("Name") != "Aggregated":
                    continue
                history.times.append(float(row["Timestamp"]))
                history.rps.append(float(row["Requests/s"]))
                history.failures.append(float(row["Failures/s"]))
                history.p50.append(_seconds(row.get("50%", "N/A")))
                history.p99.append(_seconds(row.get("99%", "N/A")))
        return history


def _seconds(milliseconds: str) -> float | None:
    try:
        return float(milliseconds) / 1000
    except ValueError:
        return None


def _plot_series(
    axes: Axes, series: list[Series], start: float, label: str, *, scale: float = 1.0, color: str | None = None
) -> None:
    """One line per series; `label` may name a label of the series (`{pod}`)."""
    for item in series:
        if item.points:
            name = label.format(**item.labels) if "{" in label else label
            times = [t - start for t, _ in item.points]
            axes.plot(times, [v * scale for _, v in item.points], label=name, color=color)


def _plot_client(
    axes: Axes,
    history: ClientHistory,
    values: list[float | None],
    start: float,
    label: str,
    *,
    color: str | None = None,
) -> None:
    points = [(t - start, v) for t, v in zip(history.times, values, strict=True) if v is not None]
    if points:
        axes.plot([t for t, _ in points], [v for _, v in points], linestyle="--", label=label, color=color)


def _finish(axes: Axes, title: str, ylabel: str, *, from_zero: bool = True) -> None:
    if from_zero:
        axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel(ylabel)
    axes.grid(visible=True, alpha=0.3)
    axes.legend(fontsize="small", loc="best")


# The charts' series: name -> (PromQL over the API's job, scale). `{job}` and `{window}` are filled in.
QUERIES: dict[str, str] = {
    "server_p50": "histogram_quantile(0.5, sum by (le) (rate(" + HISTOGRAM + "_bucket{{{job}}}[{window}])))",
    "server_p99": "histogram_quantile(0.99, sum by (le) (rate(" + HISTOGRAM + "_bucket{{{job}}}[{window}])))",
    "server_5xx_ratio": (
        "(sum(rate(" + HISTOGRAM + '_count{{{job},http_response_status_code=~"5.."}}[{window}])) or vector(0))'
        " / sum(rate(" + HISTOGRAM + "_count{{{job}}}[{window}]))"
    ),
    "server_rps": "sum(rate(" + HISTOGRAM + "_count{{{job}}}[{window}]))",
    "queue_depth": "sum(job_queue_depth)",
    "queue_wait_p90": "histogram_quantile(0.9, sum by (le) (rate(job_queue_wait_seconds_bucket[{window}])))",
    "cpu": "sum by (pod) (rate(process_cpu_seconds_total[{window}]))",
    "loop_lag_p99": "histogram_quantile(0.99, sum by (pod, le) (rate(event_loop_lag_seconds_bucket[{window}])))",
}


def record(
    prometheus: Prometheus, slo: Slo, start: float, end: float, offered_rps: float, *, history: ClientHistory
) -> dict[str, Any]:
    """Everything the charts draw, JSON-able: written as charts.json beside them, so they can be redrawn
    (`python -m loadtest.report DIR`, `make docs-images`) without the Prometheus that served the run.

    Shape: {"start", "end" (unix s), "offered_rps", "slo": {p50_target, ..., throughput_drop_alert} (seconds
    and ratios, as judged), "client": {times, rps, failures, p50, p99} (locust's per-second rows, seconds),
    "server": {QUERIES key: [{"labels", "points": [[unix s, value], ...]}]}}.
    """
    job = f'job="{prometheus.api_job}"'
    server = {
        name: [
            asdict(series) for series in prometheus.series(query.format(job=job, window=RATE_WINDOW), start, end, STEP)
        ]
        for name, query in QUERIES.items()
    }
    lines = (
        "p50_target",
        "p50_alert",
        "p99_target",
        "p99_alert",
        "error_target",
        "error_alert",
        "throughput_drop_alert",
    )
    return {
        "start": start,
        "end": end,
        "offered_rps": offered_rps,
        "slo": {name: getattr(slo, name) for name in lines},
        "client": asdict(history),
        "server": server,
    }


@dataclass
class Charts:
    """The five charts, drawn from `record`'s data alone."""

    data: dict[str, Any]
    directory: Path

    @property
    def start(self) -> float:
        return float(self.data["start"])

    @property
    def history(self) -> ClientHistory:
        return ClientHistory(**self.data["client"])

    def _series(self, name: str) -> list[Series]:
        return [
            Series(item["labels"], [(float(t), float(v)) for t, v in item["points"]])
            for item in self.data["server"][name]
        ]

    def _save(self, figure: Any, name: str) -> str:
        figure.tight_layout()
        figure.savefig(self.directory / name, dpi=100, metadata={"Software": None})
        plt.close(figure)
        return name

    def latency(self) -> str:
        figure, axes = plt.subplots(figsize=(10, 4.5))
        slo = self.data["slo"]
        for name, color, client in (("p50", "tab:blue", self.history.p50), ("p99", "tab:orange", self.history.p99)):
            _plot_series(axes, self._series(f"server_{name}"), self.start, f"server {name}", scale=1000, color=color)
            client_ms = [v * 1000 if v else None for v in client]  # locust writes 0 before it has data
            _plot_client(axes, self.history, client_ms, self.start, f"client {name}", color=color)
            axes.axhline(slo[f"{name}_target"] * 1000, linestyle=":", color=color, linewidth=1, label=f"{name} target")
            axes.axhline(slo[f"{name}_alert"] * 1000, linestyle="-.", color=color, linewidth=1, label=f"{name} alert")
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.yaxis.set_minor_formatter(NullFormatter())
        _finish(axes, "Latency percentiles (server: solid, client: dashed)", "milliseconds (log)", from_zero=False)
        return self._save(figure, "latency.png")

    def errors(self) -> str:
        figure, axes = plt.subplots(figsize=(10, 3.5))
        _plot_series(axes, self._series("server_5xx_ratio"), self.start, "server 5xx ratio", scale=100)
        history = self.history
        ratios = [(f / r * 100) if r else None for f, r in zip(history.failures, history.rps, strict=True)]
        _plot_client(axes, history, ratios, self.start, "client failures")
        axes.axhline(self.data["slo"]["error_target"] * 100, linestyle=":", color="grey", label="target")
        axes.axhline(self.data["slo"]["error_alert"] * 100, linestyle="-.", color="grey", label="alert")
        _finish(axes, "Error rate", "percent of requests")
        return self._save(figure, "errors.png")

    def throughput(self) -> str:
        figure, axes = plt.subplots(figsize=(10, 3.5))
        offered = float(self.data["offered_rps"])
        _plot_series(axes, self._series("server_rps"), self.start, "server (API pods)")
        _plot_client(axes, self.history, list(self.history.rps), self.start, "client (locust)")
        axes.axhline(offered, linestyle=":", color="grey", label="offered")
        floor = offered * (1 - self.data["slo"]["throughput_drop_alert"])
        axes.axhline(floor, linestyle="-.", color="grey", label="pass floor")
        _finish(axes, "Throughput", "requests per second")
        return self._save(figure, "throughput.png")

    def jobs(self) -> str:
        figure, (depth, wait) = plt.subplots(1, 2, figsize=(10, 3.5))
        _plot_series(depth, self._series("queue_depth"), self.start, "runnable, not claimed")
        _finish(depth, "Job queue depth", "jobs")
        _plot_series(wait, self._series("queue_wait_p90"), self.start, "queue wait p90", scale=1000)
        _finish(wait, "Job queue wait", "milliseconds")
        return self._save(figure, "jobs.png")

    def pods(self) -> str:
        figure, (cpu, lag) = plt.subplots(1, 2, figsize=(10, 3.5))
        _plot_series(cpu, self._series("cpu"), self.start, "{pod}")
        _finish(cpu, "CPU per pod", "cores")
        _plot_series(lag, self._series("loop_lag_p99"), self.start, "{pod}", scale=1000)
        _finish(lag, "Event-loop lag p99", "milliseconds")
        return self._save(figure, "pods.png")

    def all(self) -> list[str]:
        return [self.latency(), self.errors(), self.throughput(), self.jobs(), self.pods()]


CHART_DATA = "charts.json"


def redraw(directory: Path) -> list[str]:
    """Draws the charts again from DIRECTORY/charts.json into DIRECTORY; returns their file names."""
    return Charts(json.loads((directory / CHART_DATA).read_text()), directory).all()


def _verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    def mark(passed: bool | None) -> str:
        return "n/a" if passed is None else ("PASS" if passed else "FAIL")

    return [
        [v.sli, v.target, v.server_value, mark(v.server_pass), v.client_value, mark(v.client_pass)] for v in verdicts
    ]


VERDICT_HEADER = ["SLI", "target", "server (Prometheus)", "", "client (locust)", ""]
ENDPOINT_HEADER = ["request", "count", "failures", "p50 ms", "p99 ms"]


def endpoint_rows(stats_csv: Path) -> list[list[str]]:
    """Per-request-name client numbers from locust's `_stats.csv` (the last row is the aggregate)."""
    if not stats_csv.exists():
        return []
    with stats_csv.open(newline="") as file:
        return [
            [row["Name"], row["Request Count"], row["Failure Count"], row["50%"], row["99%"]]
            for row in csv.DictReader(file)
        ]


def markdown(
    title: str, facts: list[tuple[str, str]], verdicts: list[Verdict], tables: dict[str, list[list[str]]]
) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    parts = [f"# {title}", "", *(f"- {name}: {value}" for name, value in facts), ""]
    parts += ["## Verdict", "", table(VERDICT_HEADER, _verdict_rows(verdicts)), ""]
    for name, rows in tables.items():
        header, body = rows[0], rows[1:]
        parts += [f"## {name}", "", table(header, body), ""]
    return "\n".join(parts)


def html_page(
    title: str,
    facts: list[tuple[str, str]],
    verdicts: list[Verdict],
    tables: dict[str, list[list[str]]],
    charts: list[str],
) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = ""
        for row in rows:
            cells = ""
            for cell in row:
                css = {"PASS": ' class="pass"', "FAIL": ' class="fail"'}.get(cell, "")
                cells += f"<td{css}>{html.escape(cell)}</td>"
            body += f"<tr>{cells}</tr>\n"
        return f"<table><tr>{head}</tr>\n{body}</table>"

    overall = all(v.passed for v in verdicts)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="{"pass" if overall else "fail"}">Overall: {"PASS" if overall else "FAIL"}</p>',
        "<ul>" + "".join(f"<li>{html.escape(n)}: {html.escape(v)}</li>" for n, v in facts) + "</ul>",
        "<h2>Verdict</h2>",
        table(VERDICT_HEADER, _verdict_rows(verdicts)),
    ]
    sections += [f"<h2>Charts</h2>{''.join(f'<p><img src={c!r} alt={c!r}></p>' for c in charts)}"]
    for name, rows in tables.items():
        sections += [f"<h2>{html.escape(name)}</h2>", table(rows[0], rows[1:])]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.pass{color:#080;font-weight:bold}"
        ".fail{color:#b00;font-weight:bold}img{max-width:100%}"
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}<p><small>{generated}</small></p></body></html>\n"
    )


if __name__ == "__main__":  # python -m loadtest.report DIR: redraw a run's charts from its charts.json
    for argument in sys.argv[1:]:
        print(*(Path(argument) / name for name in redraw(Path(argument))), sep="\n")
