"""Traces over OTLP/HTTP: the API request and the job it enqueued are one trace.

The receiver is a fake (a collector is outside our system): a small HTTP
server that decodes the OTLP protobuf requests the real SDK exporter sends.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess, WorkerProcess, lines_where

pytestmark = pytest.mark.e2e
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    kind: int = 0
    flags: int = 0
    status_code: int = 0


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
                    )
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            attributes = {a.key: _value(a.value) for a in span.attributes}
                            receiver.spans.append(
                                ReceivedSpan(
                                    service,
                                    span.name,
                                    span.trace_id.hex(),
                                    span.span_id.hex(),
                                    span.parent_span_id.hex(),
                                    attributes,
                                    span.kind,
                                    span.flags,
                                    span.status.code,
                                )
                            )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    thread = threading.Thread(target=otlp.server.serve_forever, daemon=True)
    thread.start()
    yield otlp
    otlp.server.shutdown()
    otlp.server.server_close()


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def test_the_request_span_and_the_job_span_are_one_trace(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    receiver: OtlpReceiver,
    db: asyncpg.Connection,
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    api = start_api(**otel)
    worker = start_worker(**otel)
    caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(base_url=api.url, headers=WRITER) as http:
        created = await http.post(
            "/v1/jobs",
            json={"kind": "cpu.burn", "params": {"milliseconds": 5}},
            headers={"traceparent": caller, "X-Request-ID": "traced-1"},
        )
        assert created.status_code == 202
        job_id = created.json()["id"]
        wait_for(lambda: bool(receiver.named("job cpu.burn") and receiver.named("POST /v1/jobs")), 20, "both spans")
        metrics = await http.get(
            f"http://127.0.0.1:{api.env['METRICS_PORT']}/metrics", headers={"Accept": "application/openmetrics-text"}
        )

    [request] = receiver.named("POST /v1/jobs")
    [job] = receiver.named("job cpu.burn")
    assert request.service == "catalog-api"
    assert job.service == "catalog-worker"
    # The API continued the caller's trace; the job continued the API's request span.
    assert request.trace_id == job.trace_id == CALLER_TRACE
    assert request.parent_span_id == "00f067aa0ba902b7"
    assert job.parent_span_id == request.span_id
    assert request.attributes["http.route"] == "/v1/jobs"
    assert request.attributes["http.response.status_code"] == 202
    assert job.attributes["job.id"] == job_id
    assert job.attributes["job.outcome"] == "succeeded"
    # PostgreSQL statements are child spans, on both sides.
    children = {span.name for span in receiver.spans if span.parent_span_id == request.span_id}
    assert "postgres INSERT" in children
    worker_children = {span.name for span in receiver.spans if span.parent_span_id == job.span_id}
    assert "postgres WITH" in worker_children  # the token-guarded completion

    # The trace id is on the log lines of both sides, and an exemplar on the latency histogram.
    logged = api.logs(until=lambda line: line["logger"] == "service.access" and line.get("request_id") == "traced-1")
    api_lines = [line for line in logged if line.get("request_id") == "traced-1"]
    assert "service.access" in {line["logger"] for line in api_lines}
    assert {line["trace_id"] for line in api_lines} == {CALLER_TRACE}
    finished = lines_where([worker.logfile], lambda line: line["msg"] == "job finished")
    assert finished[0]["trace_id"] == CALLER_TRACE
    assert finished[0]["request_id"] == "traced-1"
    exemplars = re.findall(
        r'^http_server_request_duration_seconds_bucket\{[^}]*http_route="/v1/jobs"[^}]*\} \S+ # \{trace_id="(\w+)"\}',
        metrics.text,
        re.M,
    )
    assert CALLER_TRACE in exemplars


async def test_a_request_the_sampler_drops_exports_nothing_and_its_job_still_carries_the_trace(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    receiver: OtlpReceiver,
    db: asyncpg.Connection,
) -> None:
    """Head sampling drops the request before any span work, but its W3C context still reaches the job."""
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",  # every new trace dropped at the root
    }
    api = start_api(**otel)
    worker = start_worker(**otel)
    unsampled_caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-00"
    async with httpx.AsyncClient(base_url=api.url, headers=WRITER) as http:
        root = await http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1}})
        child = await http.post(
            "/v1/jobs",
            json={"kind": "cpu.burn", "params": {"milliseconds": 2}},
            headers={"traceparent": unsampled_caller, "X-Request-ID": "unsampled-child"},
        )
    assert root.status_code == child.status_code == 202
    stored = {
        row["id"]: row["traceparent"]
        for row in await db.fetch(
            "SELECT id::text, traceparent FROM jobs WHERE id::text = ANY($1)",
            [
                root.json()["id"],
                child.json()["id"],
            ],
        )
    }
    # A new trace: a fresh trace id (not the invalid all-zero one) and span id, sampled flag clear.
    root_parent = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[02]", stored[root.json()["id"]] or "")
    assert root_parent is not None, stored
    assert root_parent[1] != "0" * 32
    assert root_parent[2] != "0" * 16
    # The caller's unsampled trace continues: its trace id, our own span id, still not sampled.
    child_parent = re.fullmatch(rf"00-{CALLER_TRACE}-([0-9a-f]{{16}})-00", stored[child.json()["id"]] or "")
    assert child_parent is not None, stored
    assert child_parent[1] != "00f067aa0ba902b7"

    def finished() -> list[dict[str, object]]:
        return lines_where([worker.logfile], lambda line: line["msg"] == "job finished", timeout=0)

    wait_for(lambda: len(finished()) == 2, 20, "both jobs to finish")
    await asyncio.sleep(0.5)  # two export periods: anything recorded would have arrived
    assert receiver.spans == []
    # Nothing to look up in a tracing backend: no trace id on the log lines of either side.
    logged = api.logs(until=lambda line: line.get("request_id") == "unsampled-child")
    assert [line for line in logged if "trace_id" in line] == []
    assert all("trace_id" not in line for line in finished())


async def test_a_sampled_new_trace_has_the_trace_id_it_was_sampled_on(
    start_api: Callable[..., ApiProcess],
    start_worker: Callable[..., WorkerProcess],
    receiver: OtlpReceiver,
    db: asyncpg.Connection,
) -> None:
    """A root kept by the ratio sampler: the exported span, the job row and the job span share one trace id."""
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1",
    }
    api = start_api(**otel)
    start_worker(**otel)
    async with httpx.AsyncClient(base_url=api.url, headers=WRITER) as http:
        created = await http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 3}})
    assert created.status_code == 202
    wait_for(lambda: bool(receiver.named("job cpu.burn") and receiver.named("POST /v1/jobs")), 20, "both spans")
    [request] = receiver.named("POST /v1/jobs")
    [job] = receiver.named("job cpu.burn")
    assert request.parent_span_id == ""  # a root
    traceparent = await db.fetchval("SELECT traceparent FROM jobs WHERE id::text = $1", created.json()["id"])
    assert traceparent == f"00-{request.trace_id}-{request.span_id}-03"  # sampled, random trace id
    assert job.trace_id == request.trace_id
    assert job.parent_span_id == request.span_id


async def test_without_an_endpoint_nothing_is_exported_and_logs_carry_no_trace_id(
    start_api: Callable[..., ApiProcess], receiver: OtlpReceiver, db: asyncpg.Connection
) -> None:
    api = start_api()
    async with httpx.AsyncClient(base_url=api.url) as http:
        response = await http.get("/v1/items/1", headers={"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"})
        assert response.status_code == 404
    await asyncio.sleep(0.5)
    assert receiver.spans == []
    lines = api.logs(until=lambda line: line.get("path") == "/v1/items/1")
    assert [line["status"] for line in lines if line.get("path") == "/v1/items/1"] == [404]  # its line is there
    assert all("trace_id" not in line for line in lines)


def test_an_unsupported_otlp_protocol_stops_startup_with_one_line(start_api: Callable[..., ApiProcess]) -> None:
    with pytest.raises(RuntimeError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"):
        start_api(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")


async def test_a_sampled_span_has_the_sdks_kind_flags_status_and_attribute_limits(
    start_api: Callable[..., ApiProcess], receiver: OtlpReceiver, db: asyncpg.Connection
) -> None:
    """Spans made whole at their end (not through the SDK's tracer) still get what the SDK would give them:
    the server kind, the remote-parent flags, an unset status for a 4xx, and the OTEL_* attribute limits."""
    api = start_api(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT="12",
    )
    caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(base_url=api.url) as http:
        missing = await http.get("/v1/items/123456789", headers={"traceparent": caller})
        assert missing.status_code == 404
        root = await http.get("/v1/items/987654321")
        assert root.status_code == 404
    wait_for(lambda: len(receiver.named("GET /v1/items/{item_id}")) == 2, 20, "both request spans")
    continued, new = sorted(receiver.named("GET /v1/items/{item_id}"), key=lambda span: span.trace_id != CALLER_TRACE)
    assert continued.trace_id == CALLER_TRACE
    assert continued.parent_span_id == "00f067aa0ba902b7"
    assert continued.kind == ProtoSpan.SPAN_KIND_SERVER == new.kind
    assert continued.flags == 0x300  # the parent is known, and remote
    assert new.flags == 0x100  # the parent is known (none: a root), and not remote
    assert new.parent_span_id == ""
    assert continued.attributes["url.path"] == "/v1/items/12"  # cut to OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT
    assert continued.attributes["http.route"] == "/v1/items/{i"  # every string attribute is cut
    assert continued.attributes["http.response.status_code"] == 404
    assert continued.status_code == new.status_code == 0  # unset: a 4xx is the client's
