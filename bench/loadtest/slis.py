"""The load test's verdict: each SLI of service/slo.toml, from the server's histogram and from the client.

Two views of the same run, side by side, because they answer different questions:
- the server's own `http_server_request_duration_seconds` histogram in Prometheus
  is what the dashboards and alerts see (arrival at the app to the last byte);
- locust's client view adds the edge (nginx or the ingress) and the network,
  and counts requests that never reached the app (connection errors, 502/504).

Latency verdicts on the server side use the histogram's buckets exactly, as the
alerts do: "P99 < 200 ms" holds when at most 1 % of requests were slower than
the 0.2 s bucket boundary (slo.toml keeps every threshold a boundary). The
quantile estimate (`histogram_quantile`, interpolated inside a bucket) is shown
for reading, not judged. The client side judges locust's percentiles.

Throughput has no absolute target in slo.toml (its baseline is last week's
traffic); under a load test the baseline is the offered rate, and the run
passes when the served rate is no more than `throughput.drop_alert` below it,
the same drop the alert pages on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.slo import Slo


@dataclass(frozen=True)
class ServerView:
    """What Prometheus recorded for the run's window (API pods, probes excluded)."""

    requests: float
    errors: float  # 5xx responses
    seconds: float  # the window the counts cover
    share_slower_than_p50_target: float  # 0..1
    share_slower_than_p99_target: float
    p50_estimate: float | None  # seconds, histogram_quantile; None without traffic
    p99_estimate: float | None


@dataclass(frozen=True)
class ClientView:
    """What locust saw: every request, its status (0 = no response) and the percentiles it computed."""

    requests: int
    errors: int  # 5xx and requests that got no response at all
    rejected: int  # 429: the rate limiter said no; neither a success nor a server error
    seconds: float
    p50: float | None  # seconds
    p99: float | None


@dataclass(frozen=True)
class Verdict:
    sli: str
    target: str
    server_value: str
    server_pass: bool | None  # None: the view has no data for it
    client_value: str
    client_pass: bool | None

    @property
    def passed(self) -> bool:
        return self.server_pass is not False and self.client_pass is not False


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _ratio(errors: float, requests: float) -> float | None:
    return None if requests <= 0 else errors / requests


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.3f} %"


def judge(slo: Slo, offered_rps: float, server: ServerView, client: ClientView) -> list[Verdict]:
    """One verdict per SLI (P50, P99, error rate, throughput); targets from `slo`, rates in requests/s."""
    server_has_data = server.requests > 0
    server_errors = _ratio(server.errors, server.requests)
    client_errors = _ratio(client.errors, client.requests)
    server_rps = server.requests / server.seconds if server.seconds > 0 else 0.0
    client_rps = client.requests / client.seconds if client.seconds > 0 else 0.0
    floor = offered_rps * (1 - slo.throughput_drop_alert)
    return [
        Verdict(
            "P50 latency",
            f"< {slo.p50_target * 1000:g} ms",
            f"{_ms(server.p50_estimate)} ({server.share_slower_than_p50_target * 100:.1f} % slower than target)",
            server.share_slower_than_p50_target <= 0.5 if server_has_data else None,
            _ms(client.p50),
            None if client.p50 is None else client.p50 < slo.p50_target,
        ),
        Verdict(
            "P99 latency",
            f"< {slo.p99_target * 1000:g} ms",
            f"{_ms(server.p99_estimate)} ({server.share_slower_than_p99_target * 100:.2f} % slower than target)",
            server.share_slower_than_p99_target <= 0.01 if server_has_data else None,
            _ms(client.p99),
            None if client.p99 is None else client.p99 < slo.p99_target,
        ),
        Verdict(
            "error rate (5xx)",
            f"< {slo.error_target * 100:g} %",
            _percent(server_errors),
            None if server_errors is None else server_errors < slo.error_target,
            _percent(client_errors),
            None if client_errors is None else client_errors < slo.error_target,
        ),
        Verdict(
            "throughput",
            f">= {floor:.1f} req/s ({(1 - slo.throughput_drop_alert) * 100:g} % of {offered_rps:g} offered)",
            f"{server_rps:.1f} req/s",
            server_rps >= floor if server_has_data else None,
            f"{client_rps:.1f} req/s",
            client_rps >= floor if client.requests else None,
        ),
    ]


def as_json(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    return [asdict(verdict) | {"passed": verdict.passed} for verdict in verdicts]
