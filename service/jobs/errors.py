"""The jobs domain's own problems (the shared kinds, 404, 409, ..., are in service/errors.py)."""

from __future__ import annotations

from service.errors import ProblemError


class IdempotencyKeyReused(ProblemError):
    """The same Idempotency-Key came with a different request body (draft-ietf-httpapi-idempotency-key-header)."""

    status = 422
    title = "Idempotency-Key reused"
    problem_type = "/problems/idempotency-key-reused"
