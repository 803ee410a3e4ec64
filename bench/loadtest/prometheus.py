"""The server's side of a load test, read from Prometheus's HTTP API (instant and range queries).

Queries select the API's scrape job (slo.toml's `monitoring.api_job`), so they
read the same series the dashboards do, on `make up`'s Prometheus or a cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.slis import ServerView
from service.slo import Slo

HISTOGRAM = "http_server_request_duration_seconds"


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes its `le` label (0.05 -> "0.05", 1 -> "1.0")."""
    return repr(float(bound))


class PrometheusError(RuntimeError):
    """Prometheus did not answer, or answered with an error; the message has its words."""


@dataclass(frozen=True)
class Series:
    """One range-query result: its labels and (unix time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


class Prometheus:
    def __init__(self, url: str, api_job: str, timeout: float = 10.0) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.api_job = api_job

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            response = self.http.get(path, params=params)
        except httpx.HTTPError as error:
            raise PrometheusError(f"{self.http.base_url}{path}: {error}") from error
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params.get('query', '')!r}: {body.get('error', response.text[:200])}")
        return body["data"]["result"]

    def instant(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (each `{"metric": labels, "value": [time, text]}`), now or at `at`."""
        params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)
        return result

    def scalar(self, query: str, at: float) -> float | None:
        """The single value of an instant query at unix time `at`; None when it returns no series."""
        result = self.instant(query, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value  # NaN (0/0) means no data  # noqa: PLR0124

    def series(self, query: str, start: float, end: float, step: float) -> list[Series]:
        result = self._get(
            "/api/v1/query_range", {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        )
        return [
            Series(
                labels=item["metric"],
                points=[(float(t), float(v)) for t, v in item["values"] if v not in {"NaN", "+Inf", "-Inf"}],
            )
            for item in result
        ]

    def server_view(self, slo: Slo, start: float, end: float) -> ServerView:
        """The API's requests, 5xx and latency between `start` and `end` (unix seconds), probes excluded.

        `increase` over exactly the run's window, evaluated at its end: Prometheus
        extrapolates to the window's edges from the scrapes inside it.
        """
        window = f"{max(1, round(end - start))}s"
        job = f'job="{self.api_job}"'

        def total(extra: str = "") -> float:
            selector = ",".join(part for part in (job, extra) if part)
            return self.scalar(f"sum(increase({HISTOGRAM}_count{{{selector}}}[{window}]))", end) or 0.0

        def share_slower(bound: float) -> float:
            faster = self.scalar(f'sum(increase({HISTOGRAM}_bucket{{{job},le="{_le(bound)}"}}[{window}]))', end) or 0.0
            return 0.0 if requests <= 0 else max(0.0, 1 - faster / requests)

        def quantile(q: float) -> float | None:
            return self.scalar(
                f"histogram_quantile({q}, sum by (le) (increase({HISTOGRAM}_bucket{{{job}}}[{window}])))", end
            )

        requests = total()
        return ServerView(
            requests=requests,
            errors=total('http_response_status_code=~"5.."'),
            seconds=end - start,
            share_slower_than_p50_target=share_slower(slo.p50_target),
            share_slower_than_p99_target=share_slower(slo.p99_target),
            p50_estimate=quantile(0.5),
            p99_estimate=quantile(0.99),
        )
