"""API keys: who is calling, and may they do this.

Keys are random tokens shown once when made (`python -m service.apikeys`);
the service stores only their SHA-256 (a fast hash is right for high-entropy
tokens: there is nothing to brute-force). A presented key is hashed and
compared with every configured hash in constant time. Keys never reach a log:
only the key's name does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from service.config import ApiKeySpec
from service.errors import Forbidden, Unauthorized

TOKEN_PREFIX = "cat_"  # noqa: S105 - a prefix that makes leaked keys easy to grep for, not a secret


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class KeyRing:
    def __init__(self, specs: Iterable[ApiKeySpec]) -> None:
        self._keys = [(bytes.fromhex(spec.sha256), Principal(spec.name, spec.scopes)) for spec in specs]

    def authenticate(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, principal in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, stored):
                found = principal
        return found


def new_key() -> tuple[str, str]:
    """A fresh key and its SHA-256 hex digest."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: 401 without a valid key, 403 when the key lacks `scope`."""

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("Send an API key as `Authorization: Bearer <key>`.")
        keys: KeyRing = request.scope["state"]["keys"]
        principal = keys.authenticate(token)
        if principal is None:
            raise Unauthorized("The API key is not valid.")
        request.scope["principal"] = principal.name  # for the access log
        if scope not in principal.scopes:
            raise Forbidden(f"The key {principal.name!r} lacks the {scope!r} scope.")
        return principal

    return dependency


def requires(scope: str) -> Any:
    """`dependencies=[requires("items:write")]` on a route."""
    return Depends(require_scope(scope))


def read_access(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency for one domain's reads: public unless READS_REQUIRE_KEY is set; then the key needs `scope`."""
    required = require_scope(scope)

    async def dependency(request: Request) -> None:
        if request.scope["state"]["settings"].reads_require_key:
            await required(request)

    return dependency
