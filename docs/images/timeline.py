"""The drills' timelines, drawn from the `timeline` each drill records in drills.json (`make drill`).

One panel per drill, seconds from the drill's start on the x axis: requests
answered (2xx) and failed per second as stacked bars, the fault as a shaded
span, the last failed request as a line, and below them one row per alert with
its pending (light) and firing (dark) spans as Prometheus recorded them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

DPI = 100
WIDTH = 10.0
TRAFFIC_HEIGHT = 1.5
ALERT_ROW_HEIGHT = 0.3
PANEL_GAP = 0.95
COLORS = {"ok": "#74b374", "failed": "#d0463c", "fault": "#f2c14e", "pending": "#f3b27a", "firing": "#c4321e"}


def drawable(drills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drills that recorded a timeline (runs before it was recorded have none)."""
    return [drill for drill in drills if drill.get("timeline")]


def _traffic(axes: Axes, drill: dict[str, Any], end: float) -> None:
    timeline = drill["timeline"]
    seconds = [row[0] for row in timeline["seconds"]]
    ok = [row[1] for row in timeline["seconds"]]
    failed = [row[2] for row in timeline["seconds"]]
    axes.bar(seconds, ok, width=1.0, align="edge", color=COLORS["ok"], linewidth=0)
    axes.bar(seconds, failed, width=1.0, align="edge", bottom=ok, color=COLORS["failed"], linewidth=0)
    _marks(axes, timeline)
    axes.set_ylim(0, max([o + f for o, f in zip(ok, failed, strict=True)], default=1) * 1.25)
    axes.axvspan(timeline["fault_start"], timeline["fault_end"], ymin=0.84, color=COLORS["fault"], linewidth=0)
    axes.text(timeline["fault_start"] + 0.3, axes.get_ylim()[1] * 0.955, "fault", fontsize=7, va="center")
    lost = f", {drill['jobs_lost']} jobs lost" if drill["jobs_lost"] else ", no job lost"
    failed_total = sum(drill["failed_by_status"].values())
    axes.set_title(
        f"{drill['drill']}: {drill['fault']}  ({failed_total} of {drill['requests']} requests failed{lost})",
        fontsize=9.5,
        loc="left",
    )
    axes.set_xlim(0, end)
    axes.set_ylabel("req/s", fontsize=8)
    axes.tick_params(labelsize=7.5, labelbottom=False)
    axes.grid(visible=True, axis="x", alpha=0.3)


def _marks(axes: Axes, timeline: dict[str, Any]) -> None:
    """The fault's start and end (dotted) and the last failed request (dashed), across a panel."""
    for second in (timeline["fault_start"], timeline["fault_end"]):
        axes.axvline(second, color="#b08a1a", linestyle=":", linewidth=1)
    if timeline["last_failure"] is not None:
        axes.axvline(timeline["last_failure"], color="#333333", linestyle="--", linewidth=1)


def _row(span: dict[str, Any]) -> str:
    """An alert's row: its name, and for a name shared by several rules, the rule's window and severity."""
    qualifier = ", ".join(part for part in (span.get("window", ""), span.get("severity", "")) if part)
    return f"{span['alert']} ({qualifier})" if span.get("window") else span["alert"]


def rows(drill: dict[str, Any]) -> list[str]:
    """The alert rows of a drill: every alert that was pending or fired, and every one expected."""
    spans = drill["timeline"]["alerts"]
    shown = {_row(span) for span in spans}
    missing = {name for name in drill["expected_alerts"] if not any(s["alert"] == name for s in spans)}
    return sorted(shown | missing)


def _alerts(axes: Axes, drill: dict[str, Any], end: float) -> None:
    names = rows(drill)
    fault = (drill["timeline"]["fault_start"], drill["timeline"]["fault_end"])
    axes.axvspan(*fault, color=COLORS["fault"], alpha=0.3, linewidth=0, zorder=0)  # behind the alerts' bars
    for span in drill["timeline"]["alerts"]:
        width = span["end"] - span["start"]
        row = names.index(_row(span))
        axes.barh(row, width, left=span["start"], height=0.6, color=COLORS[span["state"]], linewidth=0)
    _marks(axes, drill["timeline"])
    expected = set(drill["expected_alerts"])
    labels = [f"{name}  [expected]" if name.split(" ")[0] in expected else name for name in names] or ["no alert"]
    axes.set_yticks(range(len(labels)), labels, fontsize=7.5)
    axes.set_ylim(-0.6, max(len(names), 1) - 0.4)
    axes.invert_yaxis()
    axes.set_xlim(0, end)
    axes.tick_params(axis="x", labelsize=7.5)
    axes.grid(visible=True, axis="x", alpha=0.3)


def draw(drills: list[dict[str, Any]], path: Path, title: str) -> None:
    """Writes one panel per drill that has a timeline into the PNG at `path`."""
    shown = drawable(drills)
    if not shown:
        raise ValueError("no drill in the data recorded a timeline: rerun `make drill` (RECORD=1)")
    ratios: list[float] = []
    for count in (max(1, len(rows(drill))) for drill in shown):
        ratios += [TRAFFIC_HEIGHT, ALERT_ROW_HEIGHT * count + 0.25, PANEL_GAP]
    ratios.pop()  # no gap after the last panel
    height = sum(ratios) + 1.3
    figure = plt.figure(figsize=(WIDTH, height), dpi=DPI)
    grid = figure.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.08, left=0.25, right=0.98)
    grid.update(top=1 - 0.55 / height, bottom=0.75 / height)
    for index, drill in enumerate(shown):
        end = drill["timeline"]["ended"]
        traffic = figure.add_subplot(grid[index * 3])
        alerts = figure.add_subplot(grid[index * 3 + 1], sharex=traffic)
        _traffic(traffic, drill, end)
        _alerts(alerts, drill, end)
        if index == len(shown) - 1:
            alerts.set_xlabel("seconds since the drill started (5 s of baseline traffic first)", fontsize=8)
    legend = [
        Patch(color=COLORS["ok"], label="answered 2xx"),
        Patch(color=COLORS["failed"], label="failed"),
        Patch(color=COLORS["fault"], label="fault (start and end dotted)"),
        Patch(color=COLORS["pending"], label="alert pending"),
        Patch(color=COLORS["firing"], label="alert firing"),
        Line2D([], [], color="#333333", linestyle="--", label="last failed request"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=6, fontsize=7.5, frameon=False, bbox_to_anchor=(0.5, 0))
    runs = sorted({f"{d['date']} UTC at {d['commit']}" for d in shown if "commit" in d})
    heading = f"{title} ({'; '.join(runs)})" if runs else title
    figure.text(0.01, 1 - 0.12 / height, heading, fontsize=11, fontweight="bold", va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(figure)
