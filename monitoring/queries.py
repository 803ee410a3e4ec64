"""Every PromQL query the dashboards and recording rules run, for tests against a live Prometheus.

    from monitoring import queries
    for where, expr in queries.panel_queries() + queries.recording_rules():
        run(queries.substitute(expr))   # Grafana's variables replaced by concrete values

An end-to-end test can then assert each one parses and, once traffic has
flowed, returns data: a renamed metric or label shows up as an empty result.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from service import slo

from . import dashboards, rules


def panel_queries() -> list[tuple[str, str]]:
    """("<dashboard uid> / <panel title>", expr) for every target of every generated dashboard, in order."""
    found: list[tuple[str, str]] = []
    for board in dashboards.all_dashboards(slo.load_monitoring()).values():
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                found.append((f"{board['uid']} / {panel['title']}", str(target["expr"])))
    return found


def variable_queries() -> list[tuple[str, str]]:
    """("<dashboard uid> / $<name>", query) for every query-type template variable (label_values(...))."""
    found: list[tuple[str, str]] = []
    for board in dashboards.all_dashboards(slo.load_monitoring()).values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found.append((f"{board['uid']} / ${variable['name']}", str(variable["definition"])))
    return found


def recording_rules(profile: str = "production") -> list[tuple[str, str]]:
    """(record name, expr) for every recording rule; `profile="test"` gives the short-window variant."""
    return [(rule.record, rule.expr) for rule in rules.all_recordings(slo.load_monitoring(), rules.PROFILES[profile])]


def default_variables() -> dict[str, str]:
    """Values for the dashboards' variables that work against any Prometheus with the catalog's metrics."""
    mon = slo.load_monitoring()
    return {
        "__rate_interval": "1m",  # Grafana: max(4 x scrape interval, step + scrape); 1m suits a 5s-15s scrape
        "__interval": "30s",
        "__range": "1h",
        "job": mon.api_job,
        "worker_job": mon.worker_job,
        "route": ".*",  # the "All" value of a multi-value variable used with =~
        "kind": ".*",
        "datasource": "prometheus",
    }


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana's `$name` and `${name}` (longest names first) with concrete values.

    Raises KeyError naming any variable left without a value, so a new variable
    in a dashboard cannot slip through an end-to-end test unsubstituted.
    """
    merged = default_variables() | dict(values or {})

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in merged:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return merged[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep theirs inside
