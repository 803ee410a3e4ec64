"""Who is calling, and may they do this: API keys, and access tokens from an OpenID provider.

A bearer credential shaped like a JWT (`header.payload.signature`) is an
access token, verified by service/oidc.py; anything else is an API key.

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
from service.errors import CredentialInQuery, InsufficientScope, ServiceUnavailable, Unauthorized
from service.metrics import TOKEN_REJECTIONS
from service.oidc import InvalidToken, IssuerUnavailable, TokenPrincipal, TokenVerifier, looks_like_jwt

TOKEN_PREFIX = "cat_"  # noqa: S105 - a prefix that makes leaked keys easy to grep for, not a secret


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


# Whoever authenticated: an API key's principal or an access token's.
Caller = Principal | TokenPrincipal


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


def refuse_credential_in_query(query_string: bytes) -> None:
    """400 when the URL carries `access_token` (RFC 6750's form we do not accept)."""
    if b"access_token" in query_string and any(
        part.split(b"=", 1)[0] == b"access_token" for part in query_string.split(b"&")
    ):
        raise CredentialInQuery


async def authenticate(request: Request) -> Caller:
    """The caller: 401 without a valid credential, 503 when tokens cannot be judged yet (issuer never reached)."""
    refuse_credential_in_query(request.scope["query_string"])
    credential = bearer_token(request.headers.get("authorization"))
    if credential is None:
        raise Unauthorized("Send an API key or an access token as `Authorization: Bearer <credential>`.", error=None)
    state = request.scope["state"]
    if not looks_like_jwt(credential):
        keys: KeyRing = state["keys"]
        principal = keys.authenticate(credential)
        if principal is None:
            raise Unauthorized("The API key is not valid.")
        return principal
    verifier: TokenVerifier | None = state["tokens"]
    if verifier is None:
        raise Unauthorized("This service accepts no access tokens (no OIDC issuer is configured).")
    try:
        return await verifier.authenticate(credential)
    except InvalidToken as invalid:
        TOKEN_REJECTIONS.labels(invalid.reason).inc()
        raise Unauthorized(f"The access token is not valid: {invalid.description}.") from None
    except IssuerUnavailable:
        raise ServiceUnavailable(
            "The identity provider's signing keys have not been fetched yet; retry shortly.",
            retry_after_seconds=max(1, round(verifier.keys.min_refetch_seconds)),
        ) from None


def require_scope(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency: 401 without a valid credential, 403 when it lacks `scope` (RFC 6750 challenges on both)."""

    async def dependency(request: Request) -> Caller:
        principal = await authenticate(request)
        request.scope["principal"] = principal.name  # for the access log; never the credential
        if scope not in principal.scopes:
            raise InsufficientScope(f"{principal.name!r} lacks the {scope!r} scope.", scope=scope)
        return principal

    return dependency


def requires(scope: str) -> Any:
    """`dependencies=[requires("items:write")]` on a route."""
    return Depends(require_scope(scope))


def read_access(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency for one domain's reads: public unless READS_REQUIRE_KEY is set; then the caller needs `scope`.

    A token in the query string is refused on public reads too: the URL would carry it into logs.
    """
    required = require_scope(scope)

    async def dependency(request: Request) -> None:
        if request.scope["state"]["settings"].reads_require_key:
            await required(request)
        elif request.scope["query_string"]:
            refuse_credential_in_query(request.scope["query_string"])

    return dependency
