"""Job endpoints under /v1/jobs: record CPU-heavy work for the worker tier, report on it.

The API never runs a job: it validates the kind and params, inserts the row
(and wakes a worker), and answers 202 at once. The job carries the request id
and trace context of the request that created it, so the worker's logs and
spans join this request's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from service import tracing
from service.auth import Caller, read_access, require_scope
from service.errors import Conflict, NotFound
from service.guards import MAX_JSON_DEPTH, require_json_body, too_deep
from service.jobs import repository
from service.jobs.errors import IdempotencyKeyReused
from service.jobs.kinds import KINDS, JobKind
from service.jobs.schemas import Job, JobCreate
from service.logging import request_id_var
from service.responses import json_response
from service.state import ConnectionDep, SettingsDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[UUID, Path(description="The job's id.")]
Writer = Annotated[Caller, Depends(require_scope("jobs:write"))]
# Printable ASCII without spaces at the ends, as the Idempotency-Key draft expects of a key.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,198}[\x21-\x7e])?$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# W3C Trace Context: printable ASCII list members, at most 512 characters in all.
_TRACESTATE = re.compile(r"^[\x20-\x7e]{0,512}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _invalid(location: list[str | int], message: str, error_type: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *location), "msg": message, "type": error_type}])


def _unstorable(value: Any, location: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The location of the first string (key or value) a jsonb column cannot hold: NUL or a lone surrogate.

    Iterative, in document order (a key before its value); `too_deep` bounded the nesting first anyway.
    """
    # (node, its location, is it a key?)
    stack: list[tuple[Any, tuple[str | int, ...], bool]] = [(value, location, False)]
    while stack:
        node, where, is_key = stack.pop()
        if isinstance(node, str):
            if not _storable(node):
                return where
        elif isinstance(node, dict) and not is_key:
            for key, item in reversed(node.items()):
                stack.extend(((item, (*where, key), False), (key, (*where, key), True)))
        elif isinstance(node, list):
            stack.extend((item, (*where, index), False) for index, item in reversed(list(enumerate(node))))
    return None


def _storable(text: str) -> bool:
    # jsonb refuses \u0000; a lone surrogate (a JSON "\ud800" escape) is not UTF-8 at all.
    return "\x00" not in text and not _SURROGATE.search(text)


def validate_job(body: JobCreate) -> tuple[JobKind, dict[str, Any]]:
    """The kind from the registry and the params as its model normalises them; 422 otherwise."""
    deep = too_deep(body.params, MAX_JSON_DEPTH - 1)  # params sit one level into the body
    if deep is not None:
        raise _invalid(["params", *deep], f"nested deeper than {MAX_JSON_DEPTH} levels", "too_deep")
    bad = _unstorable(body.params, ("params",))
    if bad is not None:
        raise _invalid(list(bad), "must not contain NUL (\\u0000) or a lone surrogate", "string_unicode")
    kind = KINDS.get(body.kind)
    if kind is None:
        raise _invalid(["kind"], f"unknown job kind; known kinds: {', '.join(sorted(KINDS))}", "unknown_kind")
    try:
        params = kind.params.model_validate(body.params)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", "params", *item["loc"])} for item in error.errors(include_url=False)]
        ) from None
    return kind, params.model_dump(mode="json")


def _job_response(row: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return json_response(repository.job_document(row), status=status, headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=Job,
    dependencies=[Depends(require_json_body)],
    responses={422: {"description": "Unknown kind, invalid params, or an Idempotency-Key reused for another body."}},
)
async def create_job(
    *,
    body: JobCreate,
    request: Request,
    principal: Writer,
    conn: ConnectionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Retrying a POST with the same key returns the same job."),
    ] = None,
) -> Response:
    kind, params = validate_job(body)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise RequestValidationError(
            [
                {
                    "loc": ("header", "idempotency-key"),
                    "msg": "must be 1-200 printable ASCII characters",
                    "type": "value_error",
                }
            ]
        )
    # What "the same request" means for an idempotent retry: the same kind and normalised params.
    request_hash = hashlib.sha256(orjson.dumps([kind.name, params], option=orjson.OPT_SORT_KEYS)).hexdigest()
    # The job continues this request's trace: our span when tracing is on, else the caller's.
    trace_headers = tracing.inject_current() if tracing.enabled else {}
    if not trace_headers and _TRACEPARENT.match(request.headers.get("traceparent", "")):
        # (a malformed header starts no trace: W3C Trace Context says to ignore it)
        trace_headers = {"traceparent": request.headers["traceparent"]}
        if _TRACESTATE.match(request.headers.get("tracestate", "\x00")):
            trace_headers["tracestate"] = request.headers["tracestate"]
    traceparent = trace_headers.get("traceparent")
    row, created = await repository.enqueue(
        conn,
        repository.NewJob(
            kind=kind.name,
            params=params,
            max_attempts=settings.job_max_attempts,
            created_by=principal.name,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            request_id=request_id_var.get(),
            traceparent=traceparent,
            tracestate=trace_headers.get("tracestate"),
        ),
    )
    if not created and row["request_hash"] != request_hash:
        raise IdempotencyKeyReused("This Idempotency-Key was already used for a different job request.")
    headers = {"Location": f"/v1/jobs/{row['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    job = dict(row.items())
    job.pop("request_hash")
    return _job_response(job, status=202, headers=headers)


@router.get("/{job_id:uuid}", response_model=Job, dependencies=[Depends(read_access("jobs:read"))])
async def get_job(job_id: JobId, conn: ConnectionDep) -> Response:
    row = await repository.get(conn, job_id)
    if row is None:
        raise NotFound(f"Job {job_id} does not exist.")
    return _job_response(row)


@router.delete(
    "/{job_id:uuid}",
    response_model=Job,
    responses={409: {"description": "The job is running or finished: only waiting jobs can be cancelled."}},
)
async def cancel_job(job_id: JobId, _: Writer, conn: ConnectionDep) -> Response:
    row = await repository.cancel(conn, job_id)
    if row is not None:
        return _job_response(row)
    current = await repository.get(conn, job_id)
    if current is None:
        raise NotFound(f"Job {job_id} does not exist.")
    raise Conflict(
        f"Job {job_id} is {current['state']}: only queued or failed (waiting to retry) jobs can be cancelled."
    )
