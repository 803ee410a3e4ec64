"""Grafana dashboards (placeholder while the rules land)."""

from __future__ import annotations

from typing import Any

from service.slo import Monitoring


def all_dashboards(mon: Monitoring) -> dict[str, dict[str, Any]]:
    return {}
