"""Errors: one hierarchy, one rendering (RFC 9457 problem+json), one place for handlers.

Domain code raises a `ProblemError` subclass; it carries its HTTP status, a
title and a problem type. A value PostgreSQL refuses despite validation (its
data-exception class: invalid text, out of range, a NUL byte; or a CHECK or
NOT NULL constraint) is a 422 `/problems/invalid-value`, never a 500. Any other exception is logged with its traceback
and answered with a bare 500 by `RequestContextMiddleware`: no stack traces,
SQL or driver messages ever reach a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    problem_type: str = "about:blank",
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": problem_type,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = list(errors)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


class ProblemError(Exception):
    """Base of every error the API answers deliberately. Subclasses set the class attributes."""

    status: int = 500
    title: str = "Internal Server Error"
    problem_type: str = "about:blank"

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers

    def to_response(self) -> Response:
        return problem_response(
            self.status,
            title=self.title,
            detail=self.detail,
            problem_type=self.problem_type,
            headers=self.headers,
        )


class BadRequest(ProblemError):
    status = 400
    title = "Bad Request"


def bearer_challenge(error: str | None = None, description: str | None = None, **params: str) -> str:
    """A `WWW-Authenticate: Bearer ...` value (RFC 6750, 3): no error code when no credential was sent.

    Values are quoted strings, so `"` and `\\` (and anything outside printable ASCII) are dropped from them.
    """
    fields = {"error": error, "error_description": description, **params}
    quoted = [f'{name}="{_quotable(value)}"' for name, value in fields.items() if value]
    return "Bearer " + ", ".join(quoted) if quoted else "Bearer"


def _quotable(value: str) -> str:
    return "".join(char for char in value if " " <= char <= "~" and char not in '"\\')


class Unauthorized(ProblemError):
    """401: no credential (`error` None), or one that is not valid (`invalid_token`)."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": bearer_challenge(error, detail if error else None)})


class Forbidden(ProblemError):
    status = 403
    title = "Forbidden"


class InsufficientScope(Forbidden):
    """403 for a valid credential without the scope the route needs; the challenge names that scope."""

    def __init__(self, detail: str, *, scope: str) -> None:
        super().__init__(
            detail, headers={"WWW-Authenticate": bearer_challenge("insufficient_scope", detail, scope=scope)}
        )


class CredentialInQuery(ProblemError):
    """400 for an access token in the URL (RFC 6750, 2.3): URLs end up in logs, histories and Referer headers."""

    status = 400
    title = "Bad Request"
    problem_type = "/problems/credential-in-query"

    def __init__(self) -> None:
        detail = "Send credentials in the Authorization header, never in the query string."
        super().__init__(detail, headers={"WWW-Authenticate": bearer_challenge("invalid_request", detail)})


class NotFound(ProblemError):
    status = 404
    title = "Not Found"


class Conflict(ProblemError):
    status = 409
    title = "Conflict"
    problem_type = "/problems/conflict"


class PayloadTooLarge(ProblemError):
    status = 413
    title = "Content Too Large"


class UnsupportedMediaType(ProblemError):
    status = 415
    title = "Unsupported Media Type"


class TooManyRequests(ProblemError):
    status = 429
    title = "Too Many Requests"
    problem_type = "/problems/rate-limited"


class ServiceUnavailable(ProblemError):
    """A dependency is down, slow or saturated, or the pod is at capacity; retry shortly."""

    status = 503
    title = "Service Unavailable"
    problem_type = "/problems/unavailable"

    def __init__(self, detail: str | None = None, *, retry_after_seconds: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


def _validation_errors(exc: RequestValidationError) -> Response:
    problems = []
    malformed = False
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            malformed = True
        location = [_printable(str(part)) for part in error.get("loc", ())]
        problems.append(
            {"location": location, "message": _printable(error.get("msg", "")), "type": error.get("type", "")}
        )
    if malformed:
        return problem_response(
            400,
            title="Malformed JSON",
            detail="The request body is not valid JSON.",
            problem_type="/problems/malformed-json",
            errors=problems,
        )
    return problem_response(
        422,
        title="Validation failed",
        detail="The request did not pass validation; see errors.",
        problem_type="/problems/validation",
        errors=problems,
    )


def _printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate from a JSON escape ("\\ud800" as a field name) becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _handle_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return exc.to_response()


async def _handle_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _validation_errors(exc)


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        # The router names only the first route that matched the path; list every method served there.
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request.app.router, request.scope))}
    return problem_response(exc.status_code, detail=exc.detail if exc.status_code != 404 else None, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(router: Any, scope: Mapping[str, Any]) -> list[str]:
    """The methods some route serves at this scope's path; HEAD wherever GET is (see HeadMiddleware)."""
    allowed = []
    for method in _METHODS:
        probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""), "method": method}
        if any(route.matches(dict(probe))[0] is Match.FULL for route in router.routes):
            allowed.append(method)
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return allowed


async def _handle_database_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning(
        "database unavailable",
        extra={"error": type(exc).__name__, "path": request.url.path},
    )
    return ServiceUnavailable("The database is unavailable or too slow; retry shortly.").to_response()


async def _handle_invalid_data(request: Request, exc: Exception) -> Response:
    # Validation should have refused the value first; the log says which check is missing.
    logger.warning(
        "database refused a value",
        extra={"error": type(exc).__name__, "sqlstate": getattr(exc, "sqlstate", None), "path": request.url.path},
    )
    return problem_response(
        422,
        title="Value not storable",
        detail="A value in the request cannot be stored (out of range, or text the database refuses).",
        problem_type="/problems/invalid-value",
    )


def install_error_handlers(
    app: FastAPI,
    database_unavailable: tuple[type[Exception], ...],
    invalid_data: tuple[type[Exception], ...] = (),
) -> None:
    """Register the handlers; `database_unavailable` are the errors answered as 503, `invalid_data` as 422."""
    app.add_exception_handler(ProblemError, _handle_problem)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    for exc_type in database_unavailable:
        app.add_exception_handler(exc_type, _handle_database_unavailable)
    for exc_type in invalid_data:
        app.add_exception_handler(exc_type, _handle_invalid_data)
